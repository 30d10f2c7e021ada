{{/* Names and labels, as `helm create` makes them. */}}
{{- define "paystream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "paystream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "paystream.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "paystream.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "paystream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paystream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "paystream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "paystream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paystream
{{- end }}

{{- define "paystream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paystream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- /* One reference per build: a tag shared by builds (the chart's appVersion, unchanged
  for as long as the version is) left the pod template unchanged, so `helm upgrade`
  restarted no worker, and a worker rescheduled later ran whichever build its node had
  cached (review h60i). */ -}}
{{- define "paystream.image" -}}
{{- $repository := required "image.repository is required: where the image built from ./Dockerfile was pushed" .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{ $repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repository }}:{{ required "image.tag (or image.digest) is required: this build's own tag, e.g. its git commit (`--set-string image.tag=$(git rev-parse --short HEAD)`: a commit of digits alone is a number to --set); a tag shared by builds restarts no worker on upgrade" .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Refusals that the values schema cannot express. */}}
{{- define "paystream.validate" -}}
{{- $name := include "paystream.fullname" . }}
{{- if gt (len $name) 52 }}
{{- fail (printf "the release's full name %q is %d characters: at most 52 (a StatefulSet's pods are labelled with its name and an 11-character revision hash, within 63), so set fullnameOverride or a shorter release name" $name (len $name)) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) (ge (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicaCount)) }}
{{- fail (printf "podDisruptionBudget.maxUnavailable (%d) must be below replicaCount (%d): a drain could evict every worker at once, each then recovering its tables" (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicaCount)) }}
{{- end }}
{{- range $label := list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" }}
{{- if hasKey ($.Values.podLabels | default dict) $label }}
{{- fail (printf "podLabels.%s: set by the chart (its selectors match it)" $label) }}
{{- end }}
{{- end }}
{{- if and (ne .Values.service.type "ClusterIP") (not .Values.service.outsideCluster) }}
{{- fail (printf "service.type %s publishes every worker's web port outside the cluster, in plain HTTP: the dashboard (customers' names and e-mail addresses, behind one shared token), the commands route, /metrics. Publish what must be reached through webhooks.ingress and commands.ingress (TLS at the ingress controller); set service.outsideCluster: true to publish it anyway" .Values.service.type) }}
{{- end }}
{{- if gt (int .Values.replicaCount) (int .Values.partitions) }}
{{- fail (printf "replicaCount (%d) > partitions (%d): a worker beyond the partition count owns none and is never ready, which stalls rolling updates" (int .Values.replicaCount) (int .Values.partitions)) }}
{{- end }}
{{- if and (has "insights" (splitList "," .Values.agents)) (not (has "ledger" (splitList "," .Values.agents))) }}
{{- fail "agents: insights runs inside the ledger sink's consumer; with a database it needs ledger too (PAYSTREAM_AGENTS)" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.metrics.serviceMonitor.enabled (not .Values.networkPolicy.allowFromNamespaces) }}
{{- fail "networkPolicy: with the ServiceMonitor on, name Prometheus's namespace in networkPolicy.allowFromNamespaces (else it cannot scrape, and every worker reads as down)" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.webhooks.ingress.enabled (not .Values.networkPolicy.allowFromNamespaces) }}
{{- fail "networkPolicy: with webhooks.ingress on, name the ingress controller's namespace in networkPolicy.allowFromNamespaces (else no provider's webhook reaches a worker)" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.commands.ingress.enabled (not .Values.networkPolicy.allowFromNamespaces) }}
{{- fail "networkPolicy: with commands.ingress on, name the ingress controller's namespace in networkPolicy.allowFromNamespaces (else no command posted reaches a worker)" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress .Values.commands.server.enabled (not .Values.commands.server.egress) }}
{{- fail "networkPolicy.egress limits the workers' egress: name the brokers in commands.server.egress too (the commands server's own rules; it needs nothing else), or its egress would be open" }}
{{- end }}
{{- $storage := index ((.Values.resources).limits | default dict) "ephemeral-storage" }}
{{- if and $storage (not .Values.persistence.enabled) .Values.persistence.size }}
{{- $limit := include "paystream.mebibytes" $storage | atoi }}
{{- $data := include "paystream.mebibytes" .Values.persistence.size | atoi }}
{{- if and (gt $limit 0) (gt $data 0) (lt $limit (add $data 2048)) }}
{{- fail (printf "resources.limits.ephemeral-storage (%s) must cover persistence.size (%s) plus 2Gi (/tmp and logs) when persistence is off (an emptyDir): the kubelet evicts a pod past its containers' limit whatever its volumes' size limits, and an evicted worker rebuilds its tables from the changelogs" (toString $storage) (toString .Values.persistence.size)) }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.config }}
{{- if has $name (list "KAFKA_BROKER_URL" "DATABASE_URL" "REDIS_URL" "PAYSTREAM_MASTER_KEY" "PAYSTREAM_RETIRED_MASTER_KEYS" "PAYSTREAM_DB_APP_PASSWORD" "PAYSTREAM_WEB_TOKEN" "PAYSTREAM_INGRESS_TOKEN" "PAYSTREAM_AGENTS" "PAYSTREAM_PARTITIONS" "PAYSTREAM_APP_ID" "PAYSTREAM_WEB_PORT" "PAYSTREAM_WEB_HOST" "PAYSTREAM_WEB_ADVERTISED_HOST" "PAYSTREAM_INGRESS_HOST" "PAYSTREAM_INGRESS_PORT" "PAYSTREAM_DATA_DIR" "PAYSTREAM_TABLE_STORE" "PAYSTREAM_REPLICATION_FACTOR" "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS" "PAYSTREAM_KAFKA_SASL_PASSWORD" "PAYSTREAM_METRICS_TOKEN") }}
{{- fail (printf "config.%s: set by the chart (a value or the Secret), not in config" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The workers' environment (they add their own database credentials); `topics` and
`migrate` get only paystream.brokerEnv. Inline, not a ConfigMap: the setup job runs as a
pre-install hook, before release objects exist. */}}
{{- define "paystream.env" -}}
{{ include "paystream.brokerEnv" . }}
{{ include "paystream.kafkaLoginEnv" . }}
- name: PAYSTREAM_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "existingSecret is required (README: docker-compose and Helm)" .Values.existingSecret }}
      key: PAYSTREAM_MASTER_KEY
- name: PAYSTREAM_RETIRED_MASTER_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: PAYSTREAM_RETIRED_MASTER_KEYS
      optional: true
{{- /* A tracing backend's API key travels in these headers: never plain env. */}}
{{- range $name := list "OTEL_EXPORTER_OTLP_HEADERS" "OTEL_EXPORTER_OTLP_TRACES_HEADERS" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.existingSecret }}
      key: {{ $name }}
      optional: true
{{- end }}
{{- if .Values.redis.fromSecret }}
{{- if .Values.redis.url }}
{{- fail "redis.url and redis.fromSecret: one or the other (a URL with a password: fromSecret)" }}
{{- end }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: REDIS_URL
{{- else if .Values.redis.url }}
{{- if or (regexMatch "^[a-z]+://[^/?#]*@" .Values.redis.url) (regexMatch "[?&][A-Za-z_]*password=" .Values.redis.url) }}
{{- fail "redis.url holds credentials, which would be plain env in the pod spec: put the URL in existingSecret (key REDIS_URL) and set redis.fromSecret" }}
{{- end }}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- end }}

{{/* Workers log in as paystream_app with its own URL (Secret key APP_DATABASE_URL):
nothing of the owner's, who could switch row-level security off, reaches them. */}}
{{- define "paystream.workerDatabaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: APP_DATABASE_URL
{{- end }}

{{/* Migrations run as the schema owner, and give paystream_app its password. */}}
{{- define "paystream.ownerDatabaseEnv" -}}
{{- range $key := list "DATABASE_URL" "PAYSTREAM_DB_APP_PASSWORD" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end }}

{{/* What `paystream topics` needs: the broker, the topics' shape, the settings given. */}}
{{- define "paystream.brokerEnv" -}}
{{ include "paystream.brokerEnvOf" (dict "root" . "kafkaLogin" true) }}
{{- end }}

{{/* As paystream.brokerEnv, without the Kafka login's settings: for `migrate`, which
never talks to the brokers, and whose settings would refuse a login without its
password (the password goes only where the brokers are reached). */}}
{{- define "paystream.migrateEnv" -}}
{{ include "paystream.brokerEnvOf" (dict "root" . "kafkaLogin" false) }}
{{- end }}

{{- define "paystream.brokerEnvOf" -}}
{{- $root := .root }}
{{- with .root }}
- name: KAFKA_BROKER_URL
  value: {{ required "kafka.brokerUrl is required" .Values.kafka.brokerUrl | quote }}
- name: PAYSTREAM_APP_ID
  value: {{ .Values.appId | quote }}
- name: PAYSTREAM_PARTITIONS
  value: {{ .Values.partitions | quote }}
- name: PAYSTREAM_REPLICATION_FACTOR
  value: {{ .Values.replicationFactor | quote }}
- name: PAYSTREAM_DATA_DIR
  value: /var/lib/paystream
{{- end }}
{{- range $key, $value := $root.Values.config }}
{{- if or $.kafkaLogin (not (hasPrefix "PAYSTREAM_KAFKA_" $key)) }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Kafka SASL login's password (PAYSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL, the
user in config), for what talks to the brokers: the workers and `topics`. */}}
{{- define "paystream.kafkaLoginEnv" -}}
- name: PAYSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: PAYSTREAM_KAFKA_SASL_PASSWORD
      optional: true
{{- end }}

{{- define "paystream.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* A storage quantity in MiB (integers with Ki, Mi, Gi, Ti, k, M, G, T or no suffix);
0 for what it cannot read (a decimal: not checked). */}}
{{- define "paystream.mebibytes" -}}
{{- $q := toString . -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q) -}}0
{{- else if hasSuffix "Ti" $q -}}{{ mul (atoi (trimSuffix "Ti" $q)) 1048576 }}
{{- else if hasSuffix "Gi" $q -}}{{ mul (atoi (trimSuffix "Gi" $q)) 1024 }}
{{- else if hasSuffix "Mi" $q -}}{{ atoi (trimSuffix "Mi" $q) }}
{{- else if hasSuffix "Ki" $q -}}{{ div (atoi (trimSuffix "Ki" $q)) 1024 }}
{{- else if hasSuffix "T" $q -}}{{ div (mul (atoi (trimSuffix "T" $q)) 1000000000000) 1048576 }}
{{- else if hasSuffix "G" $q -}}{{ div (mul (atoi (trimSuffix "G" $q)) 1000000000) 1048576 }}
{{- else if hasSuffix "M" $q -}}{{ div (mul (atoi (trimSuffix "M" $q)) 1000000) 1048576 }}
{{- else if hasSuffix "k" $q -}}{{ div (mul (atoi (trimSuffix "k" $q)) 1000) 1048576 }}
{{- else -}}{{ div (atoi $q) 1048576 }}
{{- end -}}
{{- end }}

{{/*
The tls Secret's files (a private CA, client certificates), read-only where the settings
in `config` point (PAYSTREAM_KAFKA_SSL_CAFILE: /etc/paystream/tls/ca.crt, ...).
*/}}
{{- define "paystream.tlsMount" -}}
{{- if .Values.tls.secretName }}
- name: tls
  mountPath: /etc/paystream/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "paystream.tlsVolume" -}}
{{- if .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    # Readable by the pods' group (fsGroup) alone: keys among them.
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* An Ingress routing one path of the workers' web port, and nothing else of it (the
dashboard, /v1 views and /metrics stay inside the cluster). Called with a dict: root (the
chart's context), name (the Ingress's suffix), ingress (its values: host, className,
annotations, tlsSecretName), valuesPath (named in the refusal), path and pathType, and
optionally serviceSuffix (another Service of the release's than the workers'). */}}
{{- define "paystream.publicIngress" -}}
{{- $root := .root }}
{{- if not .ingress.host }}
{{- fail (printf "%s.host: the public host %s" .valuesPath .hostFor) }}
{{- end }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ include "paystream.fullname" $root }}-{{ .name }}
  labels:
    {{- include "paystream.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component | default "worker" }}
  {{- with .ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .ingress.className }}
  ingressClassName: {{ . | quote }}
  {{- end }}
  {{- with .ingress.tlsSecretName }}
  tls:
    - hosts: [{{ $.ingress.host | quote }}]
      secretName: {{ . | quote }}
  {{- end }}
  rules:
    - host: {{ .ingress.host | quote }}
      http:
        paths:
          - path: {{ .path }}
            pathType: {{ .pathType }}
            backend:
              service:
                name: {{ include "paystream.fullname" $root }}{{ .serviceSuffix | default "" }}
                port:
                  name: http
{{- end }}

{{/* DNS, for every policy that limits egress: the ports the cluster's DNS pods listen on
  (a policy sees the pod's port: 53 on most clusters, 5353 on OpenShift). */}}
{{- define "paystream.dnsEgress" -}}
- ports:
    {{- range .Values.networkPolicy.dnsPorts }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
