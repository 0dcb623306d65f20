{{/*
The operator's environment (operator/finetune_operator/settings.py reads FTO_*). Servers bind the
pod's IP, not 0.0.0.0: on a node where pods share the host network (the local environment) two
replicas would otherwise fight over one port.
*/}}
{{- define "fto.operatorEnv" -}}
{{- $namespaces := include "fto.watchNamespaces" . | fromJsonArray -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{- /* Kopf's identity among peers: the pod's name (else it asks the password database for a user name). */}}
- name: POD_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: FTO_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: FTO_NAMESPACES
  value: {{ join "," $namespaces | quote }}
- name: FTO_TRAINER_IMAGE
  value: {{ .Values.trainer.image | quote }}
- name: FTO_TRAINER_METRICS_PORT
  value: {{ .Values.trainer.metricsPort | quote }}
- name: FTO_TRAINER_SCRATCH_MIN_BYTES
  value: {{ .Values.trainer.scratchMinBytes | int64 | quote }}
- name: FTO_PRICE_CONFIGMAP
  value: {{ include "fto.pricesName" . | quote }}
- name: FTO_S3_ENDPOINT
  value: {{ .Values.operator.s3Endpoint | quote }}
- name: FTO_HF_ENDPOINT
  value: {{ .Values.huggingface.endpoint | quote }}
- name: FTO_RESYNC_SECONDS
  value: {{ .Values.operator.resyncSeconds | quote }}
- name: FTO_PROGRESS_INTERVAL
  value: {{ .Values.operator.progressIntervalSeconds | quote }}
- name: FTO_STALL_SECONDS
  value: {{ .Values.operator.stallSeconds | quote }}
- name: FTO_IMAGE_PULL_TIMEOUT
  value: {{ .Values.operator.imagePullTimeoutSeconds | quote }}
- name: FTO_TERMINATION_GRACE_SECONDS
  value: {{ .Values.operator.terminationGraceSeconds | quote }}
- name: FTO_VALIDATION_CPU
  value: {{ .Values.validation.cpu | quote }}
- name: FTO_VALIDATION_MEMORY
  value: {{ .Values.validation.memory | quote }}
- name: FTO_VALIDATION_MEMORY_LIMIT
  value: {{ .Values.validation.memoryLimit | quote }}
- name: FTO_VALIDATION_NODE_SELECTOR
  value: {{ include "fto.kvList" .Values.validation.nodeSelector | quote }}
- name: FTO_VALIDATION_DEADLINE_SECONDS
  value: {{ .Values.validation.deadlineSeconds | quote }}
- name: FTO_VALIDATION_SCRATCH
  value: {{ .Values.validation.scratch | quote }}
- name: FTO_DATASET_MAX_FILE_BYTES
  value: {{ .Values.limits.dataset.maxFileBytes | int64 | quote }}
- name: FTO_DATASET_MAX_ROWS
  value: {{ .Values.limits.dataset.maxRows | int64 | quote }}
- name: FTO_DATASET_MAX_LINE_BYTES
  value: {{ .Values.limits.dataset.maxLineBytes | int64 | quote }}
- name: FTO_DATASET_MAX_JSON_DEPTH
  value: {{ .Values.limits.dataset.maxJsonDepth | int64 | quote }}
- name: FTO_TEMPLATE_SECONDS
  value: {{ .Values.limits.dataset.templateSeconds | quote }}
- name: FTO_TEMPLATE_MEMORY_BYTES
  value: {{ .Values.limits.dataset.templateMemoryBytes | int64 | quote }}
- name: FTO_METRICS_PORT
  value: {{ ternary .Values.ports.metrics 0 .Values.metrics.enabled | quote }}
- name: FTO_METRICS_HOST
  value: $(POD_IP)
- name: FTO_LIVENESS_ENDPOINT
  value: http://$(POD_IP):{{ .Values.ports.health }}/healthz
{{- if .Values.peering.enabled }}
- name: FTO_PEERING_NAME
  value: {{ include "fto.peeringName" . | quote }}
- name: FTO_PEERING_PRIORITY
  value: {{ .Values.peering.priority | toString | quote }}
- name: FTO_PEERING_LIFETIME
  value: {{ .Values.peering.lifetimeSeconds | quote }}
{{- end }}
{{- end }}

{{/* {a: b, c: d} -> "a=b,c=d" (sorted). */}}
{{- define "fto.kvList" -}}
{{- $out := list }}
{{- range $k, $v := . }}
{{- $out = append $out (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $out }}
{{- end }}
