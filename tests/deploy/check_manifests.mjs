// check_manifests: checks what tests/deploy/render made of the chart for one values file.
//
//   node check_manifests.mjs RENDER_JSON CHART_DIR BIN_DIR
//
// 1. The merged values against the chart's values.schema.json (as helm would, with ajv).
// 2. Every rendered object against the Kubernetes schema of its apiVersion and kind
//    (npm `kubernetes-models`, `@kubernetes-models/prometheus-operator` for the CRDs);
//    a kind with no schema is an error. Those schemas accept unknown fields, as the
//    API server's OpenAPI does, so every field is also looked up in the models'
//    TypeScript declarations: a misspelt field is an error here, as kubectl's strict
//    field validation would make it.
// 3. The chart's own promises: restricted security contexts, native gRPC probes (readiness
//    and start-up on health "", liveness on "liveness"), a Service, PodDisruptionBudget
//    and NetworkPolicy for every workload, an HPA for every workload whose autoscaling is
//    on and none aimed at a workload that does not exist, sandbox-svc's headless Service
//    and the replica address template the gateway and session-svc get pointing at its
//    Pods, every referenced ConfigMap and Secret either rendered or named in the values
//    as an existing one.
// 4. Flags and variables: every PARLEY_* variable and argument a Parley container gets
//    exists in its binary's --help, and the values pass the binary's own parser (the
//    binary runs with `--help` and the container's literal environment: a bad value
//    exits 2 before --help is looked at); OTEL_* names are the OpenTelemetry SDK's; a
//    model provider key is a variable some provider's api_key_env reads; the sandbox
//    template and providers files pass the services' own parsers (check_config_file).
// Prints one line per failure and exits 1 if there was any.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Ajv from 'ajv';

const [renderFile, chartDir, binDir] = process.argv.slice(2);
if (!renderFile || !chartDir || !binDir) {
  console.error('usage: node check_manifests.mjs RENDER_JSON CHART_DIR BIN_DIR');
  process.exit(2);
}
const render = JSON.parse(readFileSync(renderFile, 'utf8'));
const values = render.values;
const objects = render.objects.map((o) => ({ source: o.source, ...o.object }));
const failures = [];
const fail = (where, msg) => failures.push(`${where}: ${msg}`);
const id = (o) => `${o.kind}/${o.metadata?.name} (${o.source})`;

// ---- 1. values.schema.json ------------------------------------------------------------
{
  const schema = JSON.parse(readFileSync(join(chartDir, 'values.schema.json'), 'utf8'));
  const ajv = new Ajv({ allErrors: true, strict: false });
  const validate = ajv.compile(schema);
  if (!validate(values)) {
    for (const e of validate.errors) fail('values', `${e.instancePath || '/'} ${e.message}`);
  }
}

// The fields of each model, read from its .d.ts: `export interface IName { "field"?: Type; }`
// with types that are another model (imported), Array<...>, a map `{ [key: string]: T }`,
// an inline object, or a leaf (string, number, union, IntOrString, Quantity).
function declarationFile(spec) {
  const here = dirname(fileURLToPath(import.meta.url));
  return join(here, 'node_modules', `${spec}.d.ts`);
}

const declarations = new Map();
function declaration(file) {
  if (declarations.has(file)) return declarations.get(file);
  let decl = null;
  if (existsSync(file)) {
    const text = readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '');
    const imports = new Map();
    for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
      const target = m[2].startsWith('.') ? join(dirname(file), m[2].replace(/\.js$/, '.d.ts'))
                                          : declarationFile(m[2]);
      imports.set(m[1], target);
    }
    const start = text.search(/export interface \w+[^{]*\{/);
    if (start >= 0) decl = { fields: parseFields(text, text.indexOf('{', start)), imports };
  }
  declarations.set(file, decl);
  return decl;
}

// Fields of the `{ ... }` starting at text[open]: name -> type text.
function parseFields(text, open) {
  const fields = new Map();
  let i = open + 1;
  while (i < text.length) {
    const rest = text.slice(i);
    const close = rest.match(/^\s*\}/);
    if (close) break;
    const m = rest.match(/^\s*"([^"]+)"\??:\s*/);
    if (!m) { i += rest.search(/[;\n]/) + 1 || text.length; continue; }
    i += m[0].length;
    let depth = 0, j = i;
    for (; j < text.length; j++) {
      const ch = text[j];
      if (ch === '{' || ch === '<' || ch === '(') depth++;
      else if (ch === '}' || ch === '>' || ch === ')') depth--;
      else if (ch === ';' && depth === 0) break;
    }
    fields.set(m[1], text.slice(i, j).trim());
    i = j + 1;
  }
  return fields;
}

function* unknownFields(value, file, path, inline = null) {
  const decl = inline ?? declaration(file);
  if (!decl || value === null || typeof value !== 'object' || Array.isArray(value)) return;
  for (const [key, child] of Object.entries(value)) {
    const type = decl.fields.get(key);
    if (type === undefined) {
      yield `${path}.${key}`;
      continue;
    }
    yield* checkType(child, type, decl, `${path}.${key}`);
  }
}

function* checkType(value, type, decl, path) {
  const array = type.match(/^Array<([\s\S]+)>$/);
  if (array) {
    if (Array.isArray(value)) {
      for (const [i, v] of value.entries()) yield* checkType(v, array[1].trim(), decl, `${path}[${i}]`);
    }
    return;
  }
  const map = type.match(/^\{\s*\[key: string\]:\s*([\s\S]+?);?\s*\}$/);
  if (map) {
    if (value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) yield* checkType(v, map[1].trim(), decl, `${path}.${k}`);
    }
    return;
  }
  if (type.startsWith('{')) {
    yield* unknownFields(value, null, path, { fields: parseFields(type, 0), imports: decl.imports });
    return;
  }
  if (decl.imports.has(type)) yield* unknownFields(value, decl.imports.get(type), path);
}

// ---- 2. Kubernetes schemas ------------------------------------------------------------
const CORE = 'kubernetes-models';
const MODULES = {
  'monitoring.coreos.com/v1': '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
};
for (const o of objects) {
  if (!o.apiVersion || !o.kind || !o.metadata?.name) {
    fail(o.source, 'object without apiVersion, kind or metadata.name');
    continue;
  }
  const base = MODULES[o.apiVersion] ?? `${CORE}/${o.apiVersion}`;
  let Model;
  try {
    Model = (await import(`${base}/${o.kind}`))[o.kind];
  } catch {
    fail(id(o), `no schema for ${o.apiVersion} ${o.kind}`);
    continue;
  }
  const { source, ...data } = o;
  try {
    new Model(data).validate();
  } catch (e) {
    fail(id(o), e.message);
  }
  for (const path of unknownFields(data, declarationFile(`${base}/${o.kind}`), '')) {
    fail(id(o), `unknown field ${path}`);
  }
}

// ---- 3. The chart's promises ------------------------------------------------------------
const byKind = (kind) => objects.filter((o) => o.kind === kind);
const workloads = [...byKind('Deployment'), ...byKind('StatefulSet')];
const matches = (selector, labels) =>
  Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);
const podLabels = (w) => w.spec.template.metadata.labels;
const relaxedSandbox = Object.keys(values.sandbox?.securityContext ?? {}).length > 0;

for (const w of [...workloads, ...byKind('Job')]) {
  const component = podLabels(w)?.['app.kubernetes.io/component'];
  const pod = w.spec.template.spec;
  if (pod.securityContext?.runAsNonRoot !== true) fail(id(w), 'pod securityContext.runAsNonRoot is not true');
  for (const c of pod.containers) {
    const sc = c.securityContext ?? {};
    const restricted = sc.runAsNonRoot === true && sc.readOnlyRootFilesystem === true &&
      sc.allowPrivilegeEscalation === false && (sc.capabilities?.drop ?? []).includes('ALL');
    // sandbox.securityContext is the one documented way to relax it (local provider).
    if (!restricted && !(component === 'sandbox' && relaxedSandbox)) {
      fail(id(w), `container ${c.name}: securityContext is not runAsNonRoot + readOnlyRootFilesystem + no privilege escalation + drop ALL`);
    }
  }
}
for (const w of workloads) {
  const labels = podLabels(w);
  const c = w.spec.template.spec.containers[0];
  if (!c.readinessProbe?.grpc || !c.startupProbe?.grpc) fail(id(w), 'readiness and startup probes must be native gRPC probes');
  // Readiness follows the dependencies (health ""); liveness must not (health "liveness").
  for (const [name, probe] of [['readiness', c.readinessProbe], ['startup', c.startupProbe]]) {
    if (probe?.grpc?.service) fail(id(w), `${name} probe asks health "${probe.grpc.service}", not ""`);
  }
  if (c.livenessProbe?.grpc?.service !== 'liveness') fail(id(w), 'liveness probe must be native gRPC on health "liveness"');
  const autoscaled = values[labels['app.kubernetes.io/component']]?.autoscaling?.enabled;
  if (autoscaled && !byKind('HorizontalPodAutoscaler').some((h) =>
    h.spec.scaleTargetRef.kind === w.kind && h.spec.scaleTargetRef.name === w.metadata.name)) {
    fail(id(w), 'autoscaling is on but no HorizontalPodAutoscaler targets it');
  }
  if (!byKind('Service').some((s) => matches(s.spec.selector, labels))) fail(id(w), 'no Service selects it');
  const pdbOn = values[labels['app.kubernetes.io/component']]?.pdb?.enabled;
  if (pdbOn && !byKind('PodDisruptionBudget').some((p) => matches(p.spec.selector.matchLabels, labels))) {
    fail(id(w), 'no PodDisruptionBudget selects it');
  }
  if (values.networkPolicy.enabled &&
      !byKind('NetworkPolicy').some((n) => n.metadata.namespace === w.metadata.namespace &&
        matches(n.spec.podSelector.matchLabels, labels) && n.spec.policyTypes.includes('Ingress'))) {
    fail(id(w), 'no ingress NetworkPolicy selects it');
  }
  if (values.topologySpread.enabled && !(w.spec.template.spec.topologySpreadConstraints ?? []).length) {
    fail(id(w), 'no topologySpreadConstraints');
  }
}
for (const h of byKind('HorizontalPodAutoscaler')) {
  const t = h.spec.scaleTargetRef;
  if (!workloads.some((w) => w.kind === t.kind && w.metadata.name === t.name)) fail(id(h), `targets missing ${t.kind}/${t.name}`);
  if (h.spec.minReplicas > h.spec.maxReplicas) fail(id(h), 'minReplicas > maxReplicas');
}

// sandbox-svc: callers reach each replica's Pod by name through the headless Service the
// StatefulSet names, with the address template they and the replicas are given.
for (const set of byKind('StatefulSet').filter((w) => podLabels(w)['app.kubernetes.io/component'] === 'sandbox')) {
  const headless = byKind('Service').find((s) => s.metadata.name === set.spec.serviceName);
  if (!headless) fail(id(set), `serviceName ${set.spec.serviceName} is no rendered Service`);
  else if (headless.spec.clusterIP !== 'None' || !matches(headless.spec.selector, podLabels(set))) {
    fail(id(headless), 'must be headless (clusterIP None) and select the sandbox Pods');
  }
  const want = `${set.metadata.name}-{replica}.${set.spec.serviceName}.${set.metadata.namespace}.svc.`;
  for (const cm of byKind('ConfigMap')) {
    for (const key of ['PARLEY_SANDBOX_REPLICA_ADDRESS_TEMPLATE', 'PARLEY_REPLICA_ADDRESS_TEMPLATE']) {
      const template = cm.data?.[key];
      if (template !== undefined && !template.startsWith(want)) fail(id(cm), `${key} ${template} does not start with ${want}`);
    }
  }
  const env = set.spec.template.spec.containers[0].env ?? [];
  if (env.find((e) => e.name === 'PARLEY_REPLICA')?.valueFrom?.fieldRef?.fieldPath !== 'metadata.name') {
    fail(id(set), 'PARLEY_REPLICA must come from the Pod name (its ordinal names its sandboxes)');
  }
}

// The dashboard and the rules are rendered exactly when enabled and shipped.
for (const [file, enabled, kind, name] of [
  ['files/grafana/parley-dashboard.json', values.grafana.dashboards.enabled, 'ConfigMap', /-dashboard$/],
  ['files/prometheus/parley-rules.yaml', values.metrics.prometheusRule.enabled, 'PrometheusRule', /./],
]) {
  const shipped = existsSync(join(chartDir, file));
  const found = byKind(kind).some((o) => name.test(o.metadata.name));
  if (found !== (enabled && shipped)) {
    fail(file, `${kind} rendered: ${found}; expected ${enabled && shipped} (enabled: ${enabled}, file shipped: ${shipped})`);
  }
}
// Every .json a ConfigMap holds (providers, sandbox templates, the dashboard) parses.
for (const cm of byKind('ConfigMap')) {
  for (const [key, text] of Object.entries(cm.data ?? {})) {
    if (!key.endsWith('.json')) continue;
    try {
      JSON.parse(text);
    } catch (e) {
      fail(id(cm), `${key} is not JSON: ${e.message}`);
    }
  }
}
const dashboard = byKind('ConfigMap').find((o) => /-dashboard$/.test(o.metadata.name));
if (dashboard) {
  for (const [k, v] of Object.entries(values.grafana.dashboards.labels)) {
    if (dashboard.metadata.labels[k] !== v) fail(id(dashboard), `lacks the sidecar label ${k}: ${v}`);
  }
}

// Every ConfigMap and Secret a pod refers to is rendered here or named in the values.
const rendered = (kind, name) => byKind(kind).some((o) => o.metadata.name === name);
const external = new Set([
  values.postgres.existingSecret.name, values.redis.existingSecret.name,
  values.gateway.bootstrapApiKeySecret.name, values.session.providerKeysExistingSecret,
  values.telemetry.headersSecret.name, values.sandbox.templates.existingConfigMap,
].filter(Boolean));
for (const c of ['gateway', 'session', 'sandbox', 'store']) {
  for (const e of values[c].extraEnv ?? []) {
    const ref = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef;
    if (ref?.name) external.add(ref.name);  // the user's own, named in extraEnv
  }
}
const checkRef = (w, kind, name) => {
  if (!rendered(kind, name) && !external.has(name)) fail(id(w), `refers to ${kind} ${name}, which is neither rendered nor an existing one named in the values`);
};
for (const w of [...workloads, ...byKind('Job')]) {
  const pod = w.spec.template.spec;
  for (const v of pod.volumes ?? []) {
    if (v.configMap) checkRef(w, 'ConfigMap', v.configMap.name);
    if (v.secret) checkRef(w, 'Secret', v.secret.secretName);
  }
  for (const c of pod.containers) {
    for (const e of c.env ?? []) {
      if (e.valueFrom?.secretKeyRef) checkRef(w, 'Secret', e.valueFrom.secretKeyRef.name);
      if (e.valueFrom?.configMapKeyRef) checkRef(w, 'ConfigMap', e.valueFrom.configMapKeyRef.name);
    }
    for (const f of c.envFrom ?? []) {
      if (f.configMapRef) checkRef(w, 'ConfigMap', f.configMapRef.name);
      if (f.secretRef) checkRef(w, 'Secret', f.secretRef.name);
    }
  }
}

// The files the services read at start go through the parser of the service that reads
// them (check_config_file, built from the services' own code).
for (const [mounted, kind] of [['PARLEY_TEMPLATES', 'templates'], ['PARLEY_PROVIDERS_FILE', 'providers']]) {
  for (const envCm of byKind('ConfigMap').filter((o) => o.data?.[mounted])) {
    const file = envCm.data[mounted];
    const w = workloads.find((x) => x.spec.template.spec.containers[0].envFrom
      ?.some((f) => f.configMapRef?.name === envCm.metadata.name));
    const mount = w?.spec.template.spec.containers[0].volumeMounts
      ?.find((m) => file.startsWith(`${m.mountPath}/`));
    const volume = w?.spec.template.spec.volumes?.find((v) => v.name === mount?.name);
    const cm = byKind('ConfigMap').find((o) => o.metadata.name === volume?.configMap?.name);
    if (!cm) {
      if (!external.has(volume?.configMap?.name)) fail(id(envCm), `${mounted}=${file} is mounted from nothing rendered`);
      continue;
    }
    const text = cm.data?.[file.slice(mount.mountPath.length + 1)];
    if (text === undefined) {
      fail(id(cm), `holds no ${file.slice(mount.mountPath.length + 1)} for ${mounted}`);
      continue;
    }
    const tmp = mkdtempSync(join(tmpdir(), 'parley-chart-'));
    writeFileSync(join(tmp, 'file.json'), text);
    const r = spawnSync(join(binDir, 'check_config_file'), [kind, join(tmp, 'file.json')], { encoding: 'utf8' });
    rmSync(tmp, { recursive: true });
    if (r.status !== 0) fail(id(cm), `the service would refuse its ${kind} file: ${(r.stderr || String(r.error)).trim()}`);
  }
}

// ---- 4. Flags and variables ----------------------------------------------------------------
// The variables of the OpenTelemetry SDK specification the chart may set.
const OTEL = new Set(['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
  'OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_SERVICE_NAME', 'OTEL_RESOURCE_ATTRIBUTES',
  'OTEL_TRACES_SAMPLER', 'OTEL_TRACES_SAMPLER_ARG', 'OTEL_SDK_DISABLED']);
const providerKeyVars = new Set((values.session.providers?.providers ?? [])
  .map((p) => p.api_key_env).filter(Boolean));
const helpCache = new Map();

function checkContainer(w, c) {
  const m = /(?:^|\/)parley-(gateway|session|sandbox|store)(?::|@|$)/.exec(c.image);
  if (!m) return;
  const binary = join(binDir, `parley-${m[1]}`);
  const literal = {};
  const names = [];
  for (const f of c.envFrom ?? []) {
    const cm = f.configMapRef && byKind('ConfigMap').find((o) => o.metadata.name === f.configMapRef.name);
    for (const [k, v] of Object.entries(cm?.data ?? {})) { literal[k] = v; names.push(k); }
  }
  for (const e of c.env ?? []) {
    names.push(e.name);
    if (e.value !== undefined) literal[e.name] = e.value;
  }
  const args = [...(c.command ?? []).slice(1), ...(c.args ?? [])];
  const key = binary;
  if (!helpCache.has(key)) {
    const r = spawnSync(binary, ['--help'], { encoding: 'utf8', env: {} });
    if (r.status !== 0) {
      fail(id(w), `${binary} --help exited ${r.status}: ${r.stderr || r.error}`);
      return;
    }
    helpCache.set(key, r.stdout);
  }
  const help = helpCache.get(key);
  const referenced = (name) => (c.env ?? []).some((e) => (e.value ?? '').includes(`$(${name})`));
  for (const name of names) {
    if (name.startsWith('PARLEY_')) {
      if (!help.includes(`(env ${name})`)) fail(id(w), `${c.name}: ${name} is not a variable of parley-${m[1]} (--help)`);
    } else if (name.startsWith('OTEL_')) {
      if (!OTEL.has(name)) fail(id(w), `${c.name}: ${name} is not an OpenTelemetry SDK variable`);
    } else if (providerKeyVars.has(name) && m[1] === 'session') {
      // a model provider's key, read through api_key_env
    } else if (!referenced(name)) {
      fail(id(w), `${c.name}: ${name} is read by nothing (not a flag variable, an OTEL_* variable or a provider key)`);
    }
  }
  for (const a of args) {
    const flag = /^--?([a-z0-9_-]+)/.exec(a);
    if (flag && !help.includes(`--${flag[1].replace(/-/g, '_')} `)) fail(id(w), `${c.name}: argument ${a} is not a flag of parley-${m[1]}`);
  }
  // The binary's own parser judges every literal value (type, range, choice).
  const env = Object.fromEntries(Object.entries(literal).filter(([k]) => k.startsWith('PARLEY_')));
  const r = spawnSync(binary, [...args, '--help'], { encoding: 'utf8', env });
  if (r.status !== 0) fail(id(w), `${c.name}: parley-${m[1]} refuses its configuration: ${(r.stderr || '').trim()}`);
}
for (const w of [...workloads, ...byKind('Job')]) {
  for (const c of w.spec.template.spec.containers) checkContainer(w, c);
}
// Every provider key the chart passes is read by some provider (no dead secrets).
for (const k of Object.keys(values.session.providerKeys ?? {})) {
  if (!providerKeyVars.has(k)) fail('values', `session.providerKeys.${k} is not the api_key_env of any provider`);
}

for (const f of failures) console.log(`FAIL ${f}`);
console.log(`${objects.length} objects checked, ${failures.length} failures`);
process.exit(failures.length ? 1 : 0);
