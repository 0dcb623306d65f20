{{/* The chart's name, overridable. */}}
{{- define "fto.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: names every object of the release. */}}
{{- define "fto.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fto.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fto.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fto.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fto.labels" -}}
helm.sh/chart: {{ include "fto.chart" . }}
{{ include "fto.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{- define "fto.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fto.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fto.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "fto.pricesName" -}}
{{- default "finetune-operator-prices" .Values.prices.name }}
{{- end }}

{{- define "fto.peeringName" -}}
{{- default (include "fto.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The namespaces the operator watches, as a JSON list ("[]": all namespaces).
Scope namespace without watchNamespaces: the release namespace.
*/}}
{{- define "fto.watchNamespaces" -}}
{{- $ns := .Values.watchNamespaces | default list }}
{{- if and (eq .Values.rbac.scope "namespace") (empty $ns) }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- $ns | uniq | toJson }}
{{- end }}

{{/* The Prometheus Operator's API is served: ServiceMonitor, PodMonitor, PrometheusRule can be applied. */}}
{{- define "fto.hasPrometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}
