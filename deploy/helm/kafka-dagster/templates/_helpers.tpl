{{- define "kafka-dagster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka-dagster.fullname" -}}
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

{{- define "kafka-dagster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-dagster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{- define "kafka-dagster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kafka-dagster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Where the pod mounts its files; the worker reads them through the env vars below. */}}
{{- define "kafka-dagster.routesDir" -}}/etc/kafka-dagster/routes{{- end -}}
{{- define "kafka-dagster.kafkaTlsDir" -}}/etc/kafka-dagster/kafka-tls{{- end -}}
{{- define "kafka-dagster.dagsterTlsDir" -}}/etc/kafka-dagster/dagster-tls{{- end -}}
{{- define "kafka-dagster.dataDir" -}}/var/lib/kafka-dagster{{- end -}}

{{- define "kafka-dagster.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "kafka-dagster.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/*
Cross-field rules the schema cannot say in one line; each fails the render naming the value.
*/}}
{{- define "kafka-dagster.validate" -}}
{{- $k := .Values.kafka -}}
{{- if and (include "kafka-dagster.sasl" .) (not $k.sasl.existingSecret) -}}
{{- fail (printf "kafka.sasl.existingSecret: required with kafka.securityProtocol=%s" $k.securityProtocol) -}}
{{- end -}}
{{- if and $k.tls.existingSecret (not (include "kafka-dagster.tls" .)) -}}
{{- fail (printf "kafka.tls.existingSecret: only with SSL or SASL_SSL, not kafka.securityProtocol=%s" $k.securityProtocol) -}}
{{- end -}}
{{- if and (or $k.tls.certKey $k.tls.keyKey) (not $k.tls.existingSecret) -}}
{{- fail "kafka.tls.certKey/keyKey: need kafka.tls.existingSecret" -}}
{{- end -}}
{{- if and $k.tls.keyKey (not $k.tls.certKey) -}}
{{- fail "kafka.tls.keyKey: needs kafka.tls.certKey" -}}
{{- end -}}
{{- if and .Values.dagster.tls.existingSecret (not (hasPrefix "https://" .Values.dagster.graphqlUrl)) -}}
{{- fail "dagster.tls.existingSecret: dagster.graphqlUrl is not an https:// URL" -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.worker.shutdownTimeoutSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds=%v: must exceed worker.shutdownTimeoutSeconds=%v, or the hand-over is killed" .Values.terminationGracePeriodSeconds .Values.worker.shutdownTimeoutSeconds) -}}
{{- end -}}
{{- /* Each route's schema_file is mounted next to the routes file, or the worker fails at start. */ -}}
{{- $schemas := include "kafka-dagster.schemas" . | fromYaml -}}
{{- range regexFindAll "(?m)^[ \t]*schema_file[ \t]*=[ \t]*[\"'][^\"']*[\"']" (include "kafka-dagster.routesFile" .) -1 -}}
{{- $path := regexReplaceAll "^[ \t]*schema_file[ \t]*=[ \t]*[\"']([^\"']*)[\"']" . "${1}" -}}
{{- if not (and (hasPrefix "schemas/" $path) (hasKey $schemas (trimPrefix "schemas/" $path))) -}}
{{- fail (printf "routes.schemas: no %q for the routes file's schema_file = %q (--set-file 'routes.schemas.NAME=FILE')" (trimPrefix "schemas/" $path) $path) -}}
{{- end -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- $partitions := 0 -}}
{{- range .Values.keda.topics -}}{{- $partitions = max $partitions (int .partitions) -}}{{- end -}}
{{- if gt (int .Values.keda.maxReplicaCount) $partitions -}}
{{- fail (printf "keda.maxReplicaCount=%v: more than the largest topic's %v partitions; the extra replicas would sit idle" .Values.keda.maxReplicaCount $partitions) -}}
{{- end -}}
{{- if gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount) -}}
{{- fail (printf "keda.minReplicaCount=%v: more than keda.maxReplicaCount=%v" .Values.keda.minReplicaCount .Values.keda.maxReplicaCount) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The routes file: routes.file, or the chart's copy of the repository's routes.toml. */}}
{{- define "kafka-dagster.routesFile" -}}
{{- .Values.routes.file | default (.Files.Get "files/routes.toml") -}}
{{- end -}}

{{/* File name -> JSON Schema text, as YAML: routes.schemas, or with the chart's routes its schemas. */}}
{{- define "kafka-dagster.schemas" -}}
{{- $schemas := dict -}}
{{- if not .Values.routes.file -}}
{{- range $path, $_ := .Files.Glob "files/schemas/*.json" -}}
{{- $_ := set $schemas (base $path) ($.Files.Get $path) -}}
{{- end -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.routes.schemas) $schemas) -}}
{{- end -}}
