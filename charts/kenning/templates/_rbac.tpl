{{/*
The operator's RBAC rules: the calls it makes, and nothing more. They follow crds/rbac.yaml
of the repository (tests/chart/test_rbac.py keeps them equal), plus `update` on
workerpools/finalizers: a pool's Deployment is owned by the pool with blockOwnerDeletion,
which clusters with the OwnerReferencesPermissionEnforcement admission plugin require.
*/}}
{{- define "kenning.operatorRules" -}}
# WorkflowRuns: watched, started, finalized (cancel on delete), created for runs started
# outside Kubernetes, deleted after their TTL.
- apiGroups: [kenning.dev]
  resources: [workflowruns]
  verbs: [get, list, watch, patch, create, delete]
- apiGroups: [kenning.dev]
  resources: [workflowruns/status, workerpools/status]
  verbs: [patch]
- apiGroups: [kenning.dev]
  resources: [workerpools]
  verbs: [get, list, watch, patch]
- apiGroups: [kenning.dev]
  resources: [workerpools/finalizers]
  verbs: [update]
# The Deployment each WorkerPool owns: read, created, resized (no list or watch).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
# Transitions as Kubernetes Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
