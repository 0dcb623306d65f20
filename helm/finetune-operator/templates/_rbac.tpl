{{/*
What the operator does in a namespace it watches, and nothing more. It never reads Secrets: it only
names them in the pods it renders. Children are deleted by the garbage collector (owner references).
*/}}
{{- define "fto.rbac.jobRules" -}}
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch]
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [get, patch]
# Children carry blockOwnerDeletion owner references to their FineTuneJob.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# Validation pods; the trainer Job's pods are watched for progress and failures.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
# The trainer's config.json.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create]
# A multi-node attempt's headless Service: its pods' DNS names, for the rendezvous.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Kueue (spec.queueName): why a job waits, and spec.suspend through the Workload's spec.active, since
# Kueue unsuspends a Job it admitted. Harmless where Kueue is not installed.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get]
{{- end }}

{{/* Kopf's peering object in a namespace it serves (namespaced operators). */}}
{{- define "fto.rbac.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch, create]
{{- end }}
