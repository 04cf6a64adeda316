{{- /*
Shared helpers: names, labels, images, addresses, the Secret references every service
uses, and the checks that stop a render missing a required value.
Helpers that need a component take (dict "root" $ "component" "gateway").
*/ -}}

{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide prefix of every object name. */}}
{{- define "parley.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "parley.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one component's objects, e.g. "myrel-parley-gateway". */}}
{{- define "parley.componentName" -}}
{{- printf "%s-%s" (include "parley.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{/* Labels that never change for a component: used in selectors. */}}
{{- define "parley.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "parley.labels" -}}
helm.sh/chart: {{ include "parley.chart" .root }}
{{ include "parley.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: parley
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Image reference of a component: per-service repository/tag, else the shared defaults. */}}
{{- define "parley.image" -}}
{{- $v := index .root.Values .component -}}
{{- $img := $v.image | default dict -}}
{{- $repo := $img.repository -}}
{{- if not $repo -}}
{{- if .root.Values.image.registry -}}
{{- $repo = printf "%s/parley-%s" (trimSuffix "/" .root.Values.image.registry) .component -}}
{{- else -}}
{{- $repo = printf "parley-%s" .component -}}
{{- end -}}
{{- end -}}
{{- $tag := $img.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}

{{- define "parley.imagePullPolicy" -}}
{{- $v := index .root.Values .component -}}
{{- $img := $v.image | default dict -}}
{{- $img.pullPolicy | default .root.Values.image.pullPolicy | default "IfNotPresent" -}}
{{- end -}}

{{/* In-cluster gRPC address of a component: "<service name>:<grpc port>". */}}
{{- define "parley.grpcAddr" -}}
{{- $v := index .root.Values .component -}}
{{- printf "%s:%d" (include "parley.componentName" .) (int $v.grpcPort) -}}
{{- end -}}

{{/* The headless Service that gives each parley-sandbox Pod its own DNS name. */}}
{{- define "parley.sandbox.headlessName" -}}
{{- printf "%s-headless" (include "parley.componentName" (dict "root" . "component" "sandbox")) -}}
{{- end -}}

{{/*
The address of sandbox-svc replica {replica} (the StatefulSet Pod <fullname>-sandbox-N
under the headless Service), where callers send every call for that replica's
sandboxes; parley-sandbox itself uses it to reach its peers.
*/}}
{{- define "parley.sandbox.replicaAddressTemplate" -}}
{{- $name := include "parley.componentName" (dict "root" . "component" "sandbox") -}}
{{- printf "%s-{replica}.%s.%s.svc.%s:%d" $name (include "parley.sandbox.headlessName" .) .Release.Namespace .Values.clusterDomain (int .Values.sandbox.grpcPort) -}}
{{- end -}}

{{/* The most sandbox-svc replicas there can be: peers are the ordinals below it. */}}
{{- define "parley.sandbox.maxReplicas" -}}
{{- $s := .Values.sandbox -}}
{{- if $s.autoscaling.enabled }}{{ int $s.autoscaling.maxReplicas }}{{ else }}{{ int $s.replicas }}{{ end -}}
{{- end -}}

{{- define "parley.logLevel" -}}
{{- $v := index .root.Values .component -}}
{{- $v.logLevel | default .root.Values.logLevel | default "info" -}}
{{- end -}}

{{/* Seconds the kubelet waits after the preStop hook starts before SIGKILL. */}}
{{- define "parley.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.drainTimeoutSeconds) 5 -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* ---- Secrets ------------------------------------------------------------------ */}}

{{/* The Secret this chart renders from plain values (templates/secret.yaml). */}}
{{- define "parley.secretName" -}}
{{- include "parley.fullname" . -}}
{{- end -}}

{{- define "parley.postgres.secretName" -}}
{{- .Values.postgres.existingSecret.name | default (include "parley.secretName" .) -}}
{{- end -}}
{{- define "parley.postgres.secretKey" -}}
{{- if .Values.postgres.existingSecret.name -}}{{ .Values.postgres.existingSecret.key | default "database-url" }}{{- else -}}database-url{{- end -}}
{{- end -}}

{{- define "parley.redis.secretName" -}}
{{- .Values.redis.existingSecret.name | default (include "parley.secretName" .) -}}
{{- end -}}
{{- define "parley.redis.secretKey" -}}
{{- if .Values.redis.existingSecret.name -}}{{ .Values.redis.existingSecret.key | default "redis-url" }}{{- else -}}redis-url{{- end -}}
{{- end -}}

{{/* Empty when no bootstrap API key is configured. */}}
{{- define "parley.bootstrap.secretName" -}}
{{- if .Values.gateway.bootstrapApiKeySecret.name -}}
{{- .Values.gateway.bootstrapApiKeySecret.name -}}
{{- else if .Values.gateway.bootstrapApiKey -}}
{{- include "parley.secretName" . -}}
{{- end -}}
{{- end -}}
{{- define "parley.bootstrap.secretKey" -}}
{{- if .Values.gateway.bootstrapApiKeySecret.name -}}{{ .Values.gateway.bootstrapApiKeySecret.key | default "bootstrap-api-key" }}{{- else -}}bootstrap-api-key{{- end -}}
{{- end -}}

{{/* Non-empty when templates/secret.yaml has at least one plain value to hold. */}}
{{- define "parley.secret.needed" -}}
{{- if or (and .Values.postgres.url (not .Values.postgres.existingSecret.name)) (and .Values.redis.url (not .Values.redis.existingSecret.name)) (and .Values.gateway.bootstrapApiKey (not .Values.gateway.bootstrapApiKeySecret.name)) .Values.session.providerKeys -}}
true
{{- end -}}
{{- end -}}

{{/* An env entry read from a Secret: (dict "name" "PARLEY_X" "secret" "s" "key" "k"). */}}
{{- define "parley.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{- define "parley.env.redis" -}}
{{ include "parley.secretEnv" (dict "name" "PARLEY_REDIS_URL" "secret" (include "parley.redis.secretName" .) "key" (include "parley.redis.secretKey" .)) }}
{{- end -}}

{{- define "parley.env.database" -}}
{{ include "parley.secretEnv" (dict "name" "PARLEY_DATABASE_URL" "secret" (include "parley.postgres.secretName" .) "key" (include "parley.postgres.secretKey" .)) }}
{{- end -}}

{{/* ---- Sandbox ------------------------------------------------------------------ */}}

{{- define "parley.sandbox.serviceAccountName" -}}
{{- if .Values.sandbox.serviceAccount.create -}}
{{- .Values.sandbox.serviceAccount.name | default (include "parley.componentName" (dict "root" . "component" "sandbox")) -}}
{{- else -}}
{{- .Values.sandbox.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Namespace where the kubernetes provider creates sandbox Pods. */}}
{{- define "parley.sandbox.namespace" -}}
{{- .Values.sandbox.kubernetes.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Name of the ConfigMap holding the template file; empty when there is none. */}}
{{- define "parley.sandbox.templatesConfigMap" -}}
{{- if .Values.sandbox.templates.existingConfigMap -}}
{{- .Values.sandbox.templates.existingConfigMap -}}
{{- else if .Values.sandbox.templates.content -}}
{{- printf "%s-templates" (include "parley.componentName" (dict "root" . "component" "sandbox")) -}}
{{- end -}}
{{- end -}}

{{/* ---- Configuration --------------------------------------------------------- */}}

{{/* Flags the chart sets itself; <svc>.config may not name them. */}}
{{- define "parley.reservedFlags" -}}
grpc_addr admin_addr log_level drain_timeout redis_url database_url bootstrap_api_key bootstrap_tenant store_addr session_addr sandbox_addr sandbox_replica_address_template replica replica_address_template max_replicas templates state_dir providers_file kube_namespace kube_sandboxd_port
{{- end -}}

{{/* Name of a component's ConfigMap of PARLEY_* variables. */}}
{{- define "parley.envConfigMapName" -}}
{{- printf "%s-env" (include "parley.componentName" .) -}}
{{- end -}}

{{/* The providers file of session-svc: name of its ConfigMap, empty when there is none. */}}
{{- define "parley.session.providersConfigMap" -}}
{{- if .Values.session.providers -}}
{{- printf "%s-providers" (include "parley.componentName" (dict "root" . "component" "session")) -}}
{{- end -}}
{{- end -}}

{{/* OpenTelemetry variables of a component, as a YAML list of EnvVar (empty when off). */}}
{{- define "parley.env.otel" -}}
{{- $t := .root.Values.telemetry -}}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "parley-%s" .component | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,k8s.namespace.name=%s,k8s.pod.name=$(POD_NAME),service.version=%s" .root.Release.Name .root.Release.Namespace .root.Chart.AppVersion | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- if $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | toString | quote }}
{{- end }}
{{- if $t.headersSecret.name }}
{{ include "parley.secretEnv" (dict "name" "OTEL_EXPORTER_OTLP_HEADERS" "secret" $t.headersSecret.name "key" ($t.headersSecret.key | default "otlp-headers")) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* ---- Checks ------------------------------------------------------------------- */}}

{{- define "parley.validate" -}}
{{- if not (or .Values.postgres.url .Values.postgres.existingSecret.name) -}}
{{- fail "parley: set postgres.url or postgres.existingSecret.name (Postgres is external; the chart does not deploy it)" -}}
{{- end -}}
{{- if not (or .Values.redis.url .Values.redis.existingSecret.name) -}}
{{- fail "parley: set redis.url or redis.existingSecret.name (Redis is external; the chart does not deploy it)" -}}
{{- end -}}
{{- if and .Values.postgres.url (not .Values.postgres.existingSecret.name) (not (regexMatch "^postgres(ql)?://" .Values.postgres.url)) -}}
{{- fail "parley: postgres.url must start with postgresql:// or postgres://" -}}
{{- end -}}
{{- if and .Values.redis.url (not .Values.redis.existingSecret.name) (not (regexMatch "^redis(\\+cluster)?://" .Values.redis.url)) -}}
{{- fail "parley: redis.url must start with redis:// or redis+cluster:// (TLS rediss:// is not supported by the services yet)" -}}
{{- end -}}
{{- $reserved := splitList " " (include "parley.reservedFlags" .) -}}
{{- range $c := list "gateway" "session" "sandbox" "store" -}}
{{- range $flag, $_ := (index $.Values $c).config -}}
{{- if has $flag $reserved -}}
{{- fail (printf "parley: %s.config.%s is set by the chart itself; use the chart's own value for it (README.md, Values)" $c $flag) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not .Values.session.providerKeysExistingSecret -}}
{{- range $p := (.Values.session.providers.providers | default list) -}}
{{- if and $p.api_key_env (not (hasKey $.Values.session.providerKeys $p.api_key_env)) -}}
{{- fail (printf "parley: provider %q reads its key from %s: set session.providerKeys.%s or session.providerKeysExistingSecret" ($p.name | toString) $p.api_key_env $p.api_key_env) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
