{{/* Chart name, overridable. */}}
{{- define "cloudify.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Object name prefix. Release "cloudify" gives "cloudify", so the catalog Service is
"cloudify-catalog", the operator's default catalog host.
*/}}
{{- define "cloudify.fullname" -}}
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

{{- define "cloudify.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Common labels. managed-by is Helm here: the operator's own objects carry
app.kubernetes.io/managed-by: cloudify-operator, and the two sets must not be confused.
*/}}
{{- define "cloudify.labels" -}}
helm.sh/chart: {{ include "cloudify.chart" . }}
app.kubernetes.io/name: {{ include "cloudify.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (operator or catalog). Call with (list . "operator"). */}}
{{- define "cloudify.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "cloudify.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cloudify.operatorName" -}}
{{- printf "%s-operator" (include "cloudify.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cloudify.catalogName" -}}
{{- printf "%s-catalog" (include "cloudify.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cloudify.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cloudify.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of both binaries. */}}
{{- define "cloudify.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* In-cluster URL of the chart's catalog. */}}
{{- define "cloudify.catalogUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "cloudify.catalogName" .) .Release.Namespace .Values.catalog.port -}}
{{- end -}}

{{/* Secret holding the catalog's transactions token. */}}
{{- define "cloudify.catalogTokenSecret" -}}
{{- default (printf "%s-token" (include "cloudify.catalogName" .)) .Values.catalog.token.existingSecret -}}
{{- end -}}

{{/* Where the token Secret is mounted; the file is always named "token". */}}
{{- define "cloudify.tokenDir" -}}/var/run/cloudify/catalog-token{{- end -}}

{{/* Name of the leader-election Lease. */}}
{{- define "cloudify.leaseName" -}}
{{- default (include "cloudify.operatorName" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{/*
OpenTelemetry env (values `otel`) of the operator and the catalog; nothing while
otel.endpoint is empty. The operator passes these on to the servers and workers it runs.
*/}}
{{- define "cloudify.otelEnv" -}}
{{- with .Values.otel }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
{{- with .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
