{{/*
Names and labels. The RayService name is capped at 47 characters: KubeRay appends a
6-character suffix for each RayCluster it creates and keeps cluster names within 53.
*/}}
{{- define "videoserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 47 | trimSuffix "-" -}}
{{- end -}}

{{- define "videoserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- else if contains (include "videoserve.name" .) .Release.Name -}}
{{- .Release.Name | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "videoserve.name" .) | trunc 47 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "videoserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "videoserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "videoserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "videoserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: videoserve
{{- end -}}

{{- define "videoserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Ray resource a group's pods advertise and a stage pinned to it asks for. */}}
{{- define "videoserve.groupResource" -}}
{{- printf "videoserve_%s" . -}}
{{- end -}}

{{/* GPUs one pod of a group offers (the head offers none). Args: (list $root $group). */}}
{{- define "videoserve.groupGpus" -}}
{{- $root := index . 0 -}}
{{- $group := index . 1 -}}
{{- if eq $group "head" -}}0{{- else -}}{{- (index $root.Values.workerGroups $group).gpus | default 0 | float64 -}}{{- end -}}
{{- end -}}

{{/* A group is usable when it is the head or an enabled worker group. Args: (list $root $group). */}}
{{- define "videoserve.groupEnabled" -}}
{{- $root := index . 0 -}}
{{- $group := index . 1 -}}
{{- if or (eq $group "head") (index $root.Values.workerGroups $group).enabled -}}true{{- end -}}
{{- end -}}

{{/* Artifact storage and model cache claim names. */}}
{{- define "videoserve.storageClaim" -}}
{{- default (printf "%s-artifacts" (include "videoserve.fullname" .)) .Values.storage.existingClaim -}}
{{- end -}}

{{- define "videoserve.modelCacheClaim" -}}
{{- default (printf "%s-model-cache" (include "videoserve.fullname" .)) .Values.modelCache.existingClaim -}}
{{- end -}}

{{/* Redis: the bundled StatefulSet unless an external address is given. */}}
{{- define "videoserve.redisBundled" -}}
{{- if and .Values.redis.enabled (not .Values.redis.external.address) -}}true{{- end -}}
{{- end -}}

{{- define "videoserve.redisAddress" -}}
{{- if .Values.redis.external.address -}}
{{- .Values.redis.external.address -}}
{{- else -}}
{{- printf "%s-redis.%s.svc:6379" (include "videoserve.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "videoserve.redisScheme" -}}
{{- if and .Values.redis.external.address .Values.redis.external.tls -}}rediss{{- else -}}redis{{- end -}}
{{- end -}}

{{/* The Secret and key holding the Redis password; empty when Redis has no password (external only). */}}
{{- define "videoserve.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else if or (include "videoserve.redisBundled" .) .Values.redis.auth.password -}}
{{- printf "%s-redis" (include "videoserve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "videoserve.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{/* The Secret holding API keys and the webhook signing secret set in values (when any is). */}}
{{- define "videoserve.appSecretName" -}}
{{- printf "%s-app" (include "videoserve.fullname" .) -}}
{{- end -}}

{{- define "videoserve.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else if .Values.apiKeys.keys -}}
{{- include "videoserve.appSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "videoserve.apiKeysKey" -}}
{{- if .Values.apiKeys.existingSecret -}}{{ .Values.apiKeys.existingSecretKey }}{{- else -}}api-keys{{- end -}}
{{- end -}}

{{- define "videoserve.webhookSecret" -}}
{{- if .Values.webhooks.existingSecret -}}
{{- .Values.webhooks.existingSecret -}}
{{- else if .Values.webhooks.secret -}}
{{- include "videoserve.appSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "videoserve.webhookKey" -}}
{{- if .Values.webhooks.existingSecret -}}{{ .Values.webhooks.existingSecretKey }}{{- else -}}webhook-secret{{- end -}}
{{- end -}}
