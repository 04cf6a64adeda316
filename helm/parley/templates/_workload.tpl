{{- /*
The Deployment and Service every Parley service gets, rendered by gateway.yaml,
session.yaml, sandbox.yaml and store.yaml. Call with
  (dict "root" $ "component" "gateway" "env" <yaml list string> ...)
Optional keys: "volumes", "volumeMounts" (yaml list strings), "serviceAccountName",
"checksums" (dict of annotation suffix -> value).
*/ -}}

{{- define "parley.deployment" -}}
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
apiVersion: apps/v1
kind: Deployment
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
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
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
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
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
      terminationGracePeriodSeconds: {{ include "parley.terminationGracePeriodSeconds" $root }}
      {{- with $podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $c }}
          image: {{ include "parley.image" $ctx | quote }}
          imagePullPolicy: {{ include "parley.imagePullPolicy" $ctx }}
          {{- with $v.extraArgs }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            - name: grpc
              containerPort: {{ int $v.grpcPort }}
              protocol: TCP
            - name: admin
              containerPort: {{ int $v.adminPort }}
              protocol: TCP
          env:
            - name: PARLEY_GRPC_ADDR
              value: {{ printf "%s:%d" $root.Values.listenHost (int $v.grpcPort) | quote }}
            - name: PARLEY_ADMIN_ADDR
              value: {{ printf "%s:%d" $root.Values.listenHost (int $v.adminPort) | quote }}
            - name: PARLEY_LOG_LEVEL
              value: {{ include "parley.logLevel" $ctx | quote }}
            - name: PARLEY_DRAIN_TIMEOUT
              value: {{ printf "%ds" (int $root.Values.drainTimeoutSeconds) | quote }}
            {{- with $root.Values.telemetry.otlpEndpoint }}
            - name: PARLEY_OTLP_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          {{- if gt (int $root.Values.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              # Keep serving while the endpoint removal propagates; SIGTERM (and the
              # service's own drain) follows when this returns.
              exec:
                command: ["/bin/sleep", {{ int $root.Values.preStopSleepSeconds | toString | quote }}]
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
