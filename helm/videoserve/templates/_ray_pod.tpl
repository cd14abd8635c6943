{{/*
The pod template of one Ray group. Args: dict "root" "group" "spec" (head or workerGroups.<group>).
Every pod mounts the artifact storage and model cache at the same paths; the pods of the
group that hosts VideoAPI also get the app's secrets as environment variables (only the
ingress reads them).
*/}}
{{- define "videoserve.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $spec := .spec -}}
{{- $isHead := eq $group "head" -}}
{{- $gpus := include "videoserve.groupGpus" (list $root $group) | float64 -}}
{{- /* Quantities as strings, the form the Kubernetes API (and its clients' models) state them in. */ -}}
{{- $resources := dict -}}
{{- range $kind, $amounts := ($spec.resources | default dict) -}}
  {{- $quantities := dict -}}
  {{- range $resource, $amount := $amounts -}}
    {{- $_ := set $quantities $resource (ternary (toString (int64 $amount)) (toString $amount) (and (kindIs "float64" $amount) (eq (float64 (int64 $amount)) $amount))) -}}
  {{- end -}}
  {{- $_ := set $resources $kind $quantities -}}
{{- end -}}
{{- if gt $gpus 0.0 -}}
  {{- $limits := index $resources "limits" | default dict -}}
  {{- $_ := set $limits $root.Values.gpuResourceName (toString (int $gpus)) -}}
  {{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- $hostsIngress := eq (index $root.Values.serve.stageGroups "VideoAPI") $group -}}
metadata:
  labels:
    {{- include "videoserve.selectorLabels" $root | nindent 4 }}
    videoserve.io/ray-group: {{ $group }}
    {{- with $spec.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $spec.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $root.Values.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $spec.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $spec.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $spec.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" $isHead }}
      image: {{ include "videoserve.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- if $isHead }}
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        - name: serve
          containerPort: {{ int $root.Values.service.port }}
        {{- end }}
        - name: metrics
          containerPort: 8080
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sh", "-c", "ray stop"]
      {{- with $resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        {{- if $root.Values.modelCache.enabled }}
        - name: HF_HOME
          value: {{ printf "%s/huggingface" (trimSuffix "/" $root.Values.modelCache.mountPath) | quote }}
        {{- end }}
        {{- if $hostsIngress }}
        {{- if include "videoserve.apiKeysSecret" $root }}
        - name: VIDEOSERVE_API_KEYS
          valueFrom:
            secretKeyRef:
              name: {{ include "videoserve.apiKeysSecret" $root }}
              key: {{ include "videoserve.apiKeysKey" $root }}
        {{- end }}
        {{- if include "videoserve.webhookSecret" $root }}
        - name: VIDEOSERVE_WEBHOOK_SECRET
          valueFrom:
            secretKeyRef:
              name: {{ include "videoserve.webhookSecret" $root }}
              key: {{ include "videoserve.webhookKey" $root }}
        {{- end }}
        {{- if and $root.Values.redis.enabled (include "videoserve.redisSecretName" $root) }}
        - name: VIDEOSERVE_REDIS_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ include "videoserve.redisSecretName" $root }}
              key: {{ include "videoserve.redisSecretKey" $root }}
        {{- end }}
        {{- end }}
        {{- with $root.Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $spec.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      volumeMounts:
        - name: storage
          mountPath: {{ $root.Values.storage.mountPath }}
        {{- if $root.Values.modelCache.enabled }}
        - name: model-cache
          mountPath: {{ $root.Values.modelCache.mountPath }}
        {{- end }}
        {{- if $spec.shmSize }}
        - name: dshm
          mountPath: /dev/shm
        {{- end }}
  volumes:
    - name: storage
      persistentVolumeClaim:
        claimName: {{ include "videoserve.storageClaim" $root }}
    {{- if $root.Values.modelCache.enabled }}
    - name: model-cache
      persistentVolumeClaim:
        claimName: {{ include "videoserve.modelCacheClaim" $root }}
    {{- end }}
    {{- if $spec.shmSize }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $spec.shmSize }}
    {{- end }}
{{- end -}}

{{/*
rayStartParams of a group: its Ray resource (in the quoted-JSON form KubeRay and the Ray
autoscaler read), no GPUs on GPU-less pods, then the group's own. Args: dict "root" "group" "spec".
*/}}
{{- define "videoserve.rayStartParams" -}}
{{- $params := dict -}}
{{- if eq .group "head" -}}
  {{- $_ := set $params "dashboard-host" "0.0.0.0" -}}
{{- end -}}
{{- if eq (include "videoserve.groupGpus" (list .root .group) | float64) 0.0 -}}
  {{- $_ := set $params "num-gpus" "0" -}}
{{- end -}}
{{- $_ := set $params "resources" (printf "\"{\\\"%s\\\": 1000}\"" (include "videoserve.groupResource" .group)) -}}
{{- range $key, $value := (.spec.rayStartParams | default dict) -}}
  {{- $_ := set $params $key (toString $value) -}}
{{- end -}}
{{- toYaml $params -}}
{{- end -}}
