{{- /*
The workload, env ConfigMap and Service every Parley service gets, rendered by
gateway.yaml, session.yaml, sandbox.yaml and store.yaml. Call with
  (dict "root" $ "component" "gateway" "env" <ConfigMap data dict> ...)
Optional keys: "secretEnv" (YAML list string of EnvVar read from Secrets), "podEnv"
(YAML list string of EnvVar from the Downward API), "envFrom"
(YAML list string), "volumes", "volumeMounts" (YAML list strings),
"serviceAccountName", "checksums" (dict of annotation suffix -> value), "statefulSet"
(dict: "serviceName", the headless Service; "volumeClaimTemplates" YAML list string) to
render a StatefulSet instead of a Deployment.

Every non-secret setting reaches the binary as a PARLEY_<FLAG> variable from the
component's ConfigMap (envFrom), so `kubectl get cm <release>-parley-<svc>-env` shows
the whole configuration and a change rolls the pods (checksum/env annotation).
*/ -}}

{{/* The component's ConfigMap of PARLEY_* variables: chart-set ones, then <svc>.config. */}}
{{- define "parley.envConfigMap" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .component -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $data := dict
  "PARLEY_GRPC_ADDR" (printf "%s:%d" $root.Values.listenHost (int $v.grpcPort))
  "PARLEY_ADMIN_ADDR" (printf "%s:%d" $root.Values.listenHost (int $v.adminPort))
  "PARLEY_LOG_LEVEL" (include "parley.logLevel" $ctx)
  "PARLEY_DRAIN_TIMEOUT" (printf "%ds" (int $root.Values.drainTimeoutSeconds)) -}}
{{- range $k, $val := .env -}}
{{- $_ := set $data $k (toString $val) -}}
{{- end -}}
{{- range $flag, $val := $v.config -}}
{{- $_ := set $data (printf "PARLEY_%s" (upper $flag)) (toString $val) -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "parley.envConfigMapName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $ctx | nindent 4 }}
data:
  {{- toYaml $data | nindent 2 }}
{{- end -}}

{{- define "parley.workload" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $v := index $root.Values $c -}}
{{- $ctx := dict "root" $root "component" $c -}}
{{- $annotations := dict -}}
{{- if $root.Values.metrics.podAnnotations -}}
{{- $_ := set $annotations "prometheus.io/scrape" "true" -}}
{{- $_ := set $annotations "prometheus.io/port" (toString (int $v.adminPort)) -}}
{{- $_ := set $annotations "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $_ := set $annotations "checksum/env" (include "parley.envConfigMap" .  | sha256sum) -}}
{{- range $k, $val := (.checksums | default dict) -}}
{{- $_ := set $annotations (printf "checksum/%s" $k) $val -}}
{{- end -}}
{{- $annotations = merge (deepCopy ($v.podAnnotations | default dict)) (deepCopy ($root.Values.podAnnotations | default dict)) $annotations -}}
{{- $podLabels := merge (deepCopy ($v.podLabels | default dict)) (deepCopy ($root.Values.podLabels | default dict)) -}}
{{- $podSecurityContext := $v.podSecurityContext | default $root.Values.podSecurityContext -}}
{{- $securityContext := $v.securityContext | default $root.Values.securityContext -}}
{{- $nodeSelector := $v.nodeSelector | default $root.Values.nodeSelector -}}
{{- $tolerations := $v.tolerations | default $root.Values.tolerations -}}
{{- $affinity := $v.affinity | default $root.Values.affinity -}}
{{- $spread := $root.Values.topologySpread -}}
apiVersion: apps/v1
kind: {{ if .statefulSet }}StatefulSet{{ else }}Deployment{{ end }}
metadata:
  name: {{ include "parley.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $ctx | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ int $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if .statefulSet }}
  serviceName: {{ .statefulSet.serviceName }}
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  {{- else }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  {{- end }}
  selector:
    matchLabels:
      {{- include "parley.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "parley.labels" $ctx | nindent 8 }}
        {{- with $podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- toYaml $annotations | nindent 8 }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .serviceAccountName }}
      serviceAccountName: {{ .serviceAccountName }}
      automountServiceAccountToken: true
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "parley.terminationGracePeriodSeconds" $root }}
      {{- with $podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $c }}
          image: {{ include "parley.image" $ctx | quote }}
          imagePullPolicy: {{ include "parley.imagePullPolicy" $ctx }}
          ports:
            - name: grpc
              containerPort: {{ int $v.grpcPort }}
              protocol: TCP
            - name: admin
              containerPort: {{ int $v.adminPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "parley.envConfigMapName" $ctx }}
            {{- with .envFrom }}
            {{- . | nindent 12 }}
            {{- end }}
          {{- $otel := include "parley.env.otel" $ctx | trim }}
          {{- if or .secretEnv .podEnv $otel $v.extraEnv }}
          env:
            {{- with .secretEnv }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .podEnv }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $otel }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          {{- /*
          Native gRPC probes on the service's two health names. "" is SERVING only while
          the service's hard dependencies answer and it is not draining: readiness and
          start-up. "liveness" is SERVING for as long as the process serves gRPC, whatever
          its dependencies do: a liveness probe that followed Redis or Postgres would
          restart every pod during an outage of theirs, which heals nothing.
          */}}
          startupProbe:
            grpc:
              port: {{ int $v.grpcPort }}
            periodSeconds: 2
            failureThreshold: 60
          readinessProbe:
            grpc:
              port: {{ int $v.grpcPort }}
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ int $v.grpcPort }}
              service: liveness
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          {{- if gt (int $root.Values.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ int $root.Values.preStopSleepSeconds }}"]
          {{- end }}
          {{- with $v.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- if $spread.enabled }}
      topologySpreadConstraints:
        {{- range $key := $spread.topologyKeys }}
        - maxSkew: {{ int $spread.maxSkew }}
          topologyKey: {{ $key }}
          whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "parley.selectorLabels" $ctx | nindent 14 }}
        {{- end }}
      {{- end }}
      {{- with $nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- with .statefulSet }}
  {{- with .volumeClaimTemplates }}
  volumeClaimTemplates:
    {{- . | nindent 4 }}
  {{- end }}
  {{- end }}
{{- end -}}

{{- define "parley.service" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $v := index $root.Values $c -}}
{{- $ctx := dict "root" $root "component" $c -}}
{{- $svc := $v.service | default dict -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "parley.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "parley.labels" $ctx | nindent 4 }}
    # The Prometheus job name the shipped dashboard and alert rules select on.
    parley-job: parley-{{ $c }}
  {{- with $svc.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $svc.type | default "ClusterIP" }}
  selector:
    {{- include "parley.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int $v.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: admin
      port: {{ int $v.adminPort }}
      targetPort: admin
      protocol: TCP
      appProtocol: http
{{- end -}}

{{/* Everything one service renders: env ConfigMap, workload, Service. */}}
{{- define "parley.component" -}}
{{ include "parley.envConfigMap" . }}
---
{{ include "parley.workload" . }}
---
{{ include "parley.service" (dict "root" .root "component" .component) }}
{{- end -}}
