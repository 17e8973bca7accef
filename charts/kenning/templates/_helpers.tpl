{{/* Names, labels and the checks that values.schema.json cannot express. */}}

{{- define "kenning.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kenning.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kenning.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kenning.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kenning
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "sink") */}}
{{- define "kenning.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kenning.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kenning.componentLabels" -}}
{{ include "kenning.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kenning.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "kenning.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kenning.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kenning.sinkServiceAccount" -}}
{{- if .Values.sink.serviceAccount.create -}}
{{- default (printf "%s-sink" (include "kenning.fullname" .)) .Values.sink.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.sink.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kenning.sinkName" -}}
{{- printf "%s-sink" (include "kenning.fullname" .) -}}
{{- end -}}

{{- define "kenning.postgresqlName" -}}
{{- printf "%s-postgresql" (include "kenning.fullname" .) -}}
{{- end -}}

{{- define "kenning.sinkNamespace" -}}
{{- default .Release.Namespace .Values.sink.defaultNamespace -}}
{{- end -}}

{{/* The Secret (name, key) that holds the store URL, after checking the choice is whole. */}}
{{- define "kenning.databaseSecretName" -}}
{{- include "kenning.validate" . -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s-database" (include "kenning.fullname" .) -}}
{{- else -}}
{{- .Values.database.existingSecret.name -}}
{{- end -}}
{{- end -}}

{{- define "kenning.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled -}}database{{- else -}}{{ .Values.database.existingSecret.key }}{{- end -}}
{{- end -}}

{{/* KENNING_DATABASE from the store Secret. */}}
{{- define "kenning.databaseEnv" -}}
- name: KENNING_DATABASE
  valueFrom:
    secretKeyRef:
      name: {{ include "kenning.databaseSecretName" . }}
      key: {{ include "kenning.databaseSecretKey" . }}
{{- end -}}

{{/* Rules across values that a JSON schema cannot say clearly. */}}
{{- define "kenning.validate" -}}
{{- $db := .Values.database.existingSecret -}}
{{- if and .Values.postgresql.enabled $db.name -}}
{{- fail "kenning: choose one store: database.existingSecret.name is set and postgresql.enabled is true; set postgresql.enabled=false to use your own PostgreSQL" -}}
{{- end -}}
{{- if and (not .Values.postgresql.enabled) (not $db.name) -}}
{{- fail "kenning: no store configured: set database.existingSecret.name to a Secret whose key (database.existingSecret.key) holds postgresql://user:password@host:5432/dbname, or set postgresql.enabled=true to try the bundled PostgreSQL" -}}
{{- end -}}
{{- if and .Values.operator.enabled (not .Values.postgresql.enabled) (ne $db.key "database") -}}
{{- fail (printf "kenning: database.existingSecret.key is %q, but worker pods read the key \"database\" of that Secret (the operator gives them KENNING_DATABASE from it): store the URL under the key \"database\"" $db.key) -}}
{{- end -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) -}}
{{- fail (printf "kenning: operator.replicas is %d but operator.peering.enabled is false; more than one operator needs peering, or they would all act on the same runs" (int .Values.operator.replicas)) -}}
{{- end -}}
{{- if and .Values.sink.autoscaling.enabled (gt (int .Values.sink.autoscaling.minReplicas) (int .Values.sink.autoscaling.maxReplicas)) -}}
{{- fail (printf "kenning: sink.autoscaling.minReplicas (%d) is greater than sink.autoscaling.maxReplicas (%d)" (int .Values.sink.autoscaling.minReplicas) (int .Values.sink.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- range .Values.workerPools -}}
{{- if gt (int (default 0 .minReplicas)) (int (default 10 .maxReplicas)) -}}
{{- fail (printf "kenning: workerPools %q: minReplicas (%d) is greater than maxReplicas (%d)" .name (int (default 0 .minReplicas)) (int (default 10 .maxReplicas))) -}}
{{- end -}}
{{- end -}}
{{- $names := dict -}}
{{- range .Values.workerPools -}}
{{- if hasKey $names .name -}}
{{- fail (printf "kenning: workerPools: the name %q is used twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- end -}}
{{- $triggers := dict -}}
{{- range .Values.knative.triggers -}}
{{- if hasKey $triggers .name -}}
{{- fail (printf "kenning: knative.triggers: the name %q is used twice" .name) -}}
{{- end -}}
{{- $_ := set $triggers .name true -}}
{{- end -}}
{{- end -}}
