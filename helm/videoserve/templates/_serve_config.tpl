{{/*
serveConfigV2, built from files/serve-defaults.yaml (generated from the Python code by
`python -m deploy.chart_files`) and values:

- args: the chart's own storage / cache / secret-env settings, then serve.args over them;
- deployments: deployment_names() of those args (ImageConditioner for image-to-video
  models, PromptExpander when args.prompt_expander.model is set), each the code's
  default options with serve.deployments.<Name> merged over them, pinned to its worker
  group's Ray resource, the Denoiser given one bundle per rank (_placement.tpl).
- several models (serve.args.models longer than one): which model stages share weights
  is decided in Python from the checkpoints themselves, so the chart cannot name them.
  The per-kind options (the same merge, pinning and bundles) then go into
  args.stage_options, which the builder applies to every deployment of each kind, and
  the deployments list holds the deployments an app has once (VideoAPI, PostProcessor,
  PromptExpander).

Nothing here restates a deployment option: the defaults come from the generated file.
*/}}

{{/* Recursive merge, `extra` winning; maps merge, anything else is replaced (sprig's
merge functions skip zero values, so `num_gpus: 0` could not override otherwise). */}}
{{- define "videoserve.deepMerge" -}}
{{- $merged := deepCopy (.base | default dict) -}}
{{- range $key, $value := (.extra | default dict) -}}
  {{- $current := index $merged $key -}}
  {{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
    {{- $_ := set $merged $key (include "videoserve.deepMerge" (dict "base" $current "extra" $value) | fromJson) -}}
  {{- else -}}
    {{- $_ := set $merged $key $value -}}
  {{- end -}}
{{- end -}}
{{- toJson $merged -}}
{{- end -}}

{{/* The args the chart itself sets: where its volumes are mounted and which env vars hold its secrets. */}}
{{- define "videoserve.chartArgs" -}}
{{- $storage := dict "state_dir" .Values.storage.mountPath "artifact_dir" (printf "%s/artifacts" (trimSuffix "/" .Values.storage.mountPath)) -}}
{{- if .Values.redis.enabled -}}
  {{- $_ := set $storage "job_store_url" (printf "%s://%s/%d" (include "videoserve.redisScheme" .) (include "videoserve.redisAddress" .) (int .Values.redis.jobStoreDb)) -}}
  {{- if include "videoserve.redisSecretName" . -}}
    {{- $_ := set $storage "job_store_password_env" "VIDEOSERVE_REDIS_PASSWORD" -}}
  {{- end -}}
{{- end -}}
{{- $args := dict "storage" $storage -}}
{{- if .Values.modelCache.enabled -}}
  {{- $_ := set $args "cache_dir" .Values.modelCache.mountPath -}}
{{- end -}}
{{- if include "videoserve.apiKeysSecret" . -}}
  {{- $_ := set $args "api" (dict "api_keys_env" "VIDEOSERVE_API_KEYS") -}}
{{- end -}}
{{- if include "videoserve.webhookSecret" . -}}
  {{- $_ := set $args "webhooks" (dict "secret_env" "VIDEOSERVE_WEBHOOK_SECRET") -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{/* The application's args: the chart's, with serve.args over them. */}}
{{- define "videoserve.appArgs" -}}
{{- include "videoserve.deepMerge" (dict "base" (include "videoserve.chartArgs" . | fromJson) "extra" .Values.serve.args) -}}
{{- end -}}

{{/* The app's model sources (serve.args.models: strings or {source, name, ...}), as a JSON list. */}}
{{- define "videoserve.modelSources" -}}
{{- $defaults := .Files.Get "files/serve-defaults.yaml" | fromYaml -}}
{{- $args := include "videoserve.appArgs" . | fromJson -}}
{{- $sources := list -}}
{{- range $model := (index $args "models" | default (list $defaults.default_model)) -}}
  {{- if kindIs "map" $model -}}
    {{- $sources = append $sources (index $model "source") -}}
  {{- else -}}
    {{- $sources = append $sources $model -}}
  {{- end -}}
{{- end -}}
{{- toJson $sources -}}
{{- end -}}

{{/* The app's layout: colocated or disaggregated, always explicit here. `auto` would be decided
where the app is built, the head pod, which has no GPU: the chart refuses it. */}}
{{- define "videoserve.layout" -}}
{{- $args := include "videoserve.appArgs" . | fromJson -}}
{{- $layout := index $args "layout" | default "auto" -}}
{{- if not (has $layout (list "colocated" "disaggregated")) -}}
  {{- fail (printf "serve.args.layout must be colocated or disaggregated in the chart (got %s): auto would be decided on the head pod, which has no GPU" $layout) -}}
{{- end -}}
{{- $layout -}}
{{- end -}}

{{/* The model-stage kinds of the app's layout: one Pipeline per model (colocated), or one per stage. */}}
{{- define "videoserve.modelStageKinds" -}}
{{- $defaults := .Files.Get "files/serve-defaults.yaml" | fromYaml -}}
{{- if eq (include "videoserve.layout" .) "colocated" -}}
  {{- toJson $defaults.colocated_stage_kinds -}}
{{- else -}}
  {{- toJson $defaults.model_stage_kinds -}}
{{- end -}}
{{- end -}}

{{/* deployment_names(AppConfig(args)), as a JSON list. */}}
{{- define "videoserve.deploymentNames" -}}
{{- $defaults := .Files.Get "files/serve-defaults.yaml" | fromYaml -}}
{{- $args := include "videoserve.appArgs" . | fromJson -}}
{{- $sources := include "videoserve.modelSources" . | fromJsonArray -}}
{{- $names := $defaults.app_deployments_before -}}
{{- if and (eq (len $sources) 1) (eq (include "videoserve.layout" .) "colocated") -}}
  {{- $names = concat $names $defaults.colocated_stage_kinds -}}
{{- else if eq (len $sources) 1 -}}
  {{- $model := first $sources -}}
  {{- $imageToVideo := false -}}
  {{- if hasKey $defaults.preset_tasks $model -}}
    {{- $imageToVideo = has "i2v" (index $defaults.preset_tasks $model) -}}
    {{- if and .Values.serve.imageToVideo (not $imageToVideo) -}}
      {{- fail (printf "serve.imageToVideo is true but serve.args.models[0] %s is a text-to-video preset; the flag is for model directories that can run image-to-video" $model) -}}
    {{- end -}}
  {{- else -}}
    {{- $imageToVideo = .Values.serve.imageToVideo -}}
  {{- end -}}
  {{- range $kind := $defaults.model_stage_kinds -}}
    {{- if or $imageToVideo (not (has $kind $defaults.image_to_video_stage_kinds)) -}}
      {{- $names = append $names $kind -}}
    {{- end -}}
  {{- end -}}
{{- end -}}
{{- $names = concat $names $defaults.app_deployments_after -}}
{{- if dig "prompt_expander" "model" "" $args -}}{{- $names = concat $names $defaults.prompt_expander_deployments -}}{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* One deployment's Serve options. Args: dict "root" "name" "degree" "defaults". */}}
{{- define "videoserve.deploymentOptions" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $overrides := index ($root.Values.serve.deployments | default dict) $name | default dict -}}
{{- $options := include "videoserve.deepMerge" (dict "base" (index .defaults.deployments $name) "extra" $overrides) | fromJson -}}
{{- $group := index $root.Values.serve.stageGroups $name -}}
{{- if not $group -}}
  {{- fail (printf "serve.stageGroups.%s is not set: every deployment runs on a group (head, dit, aux or cpu)" $name) -}}
{{- end -}}
{{- if not (include "videoserve.groupEnabled" (list $root $group)) -}}
  {{- fail (printf "serve.stageGroups.%s is %s but workerGroups.%s.enabled is false" $name $group $group) -}}
{{- end -}}
{{- if and (hasKey $options "num_replicas") (index $options "autoscaling_config") -}}
  {{- fail (printf "serve.deployments.%s sets num_replicas while autoscaling_config is on (Ray Serve refuses both): add autoscaling_config: null to pin the replica count" $name) -}}
{{- end -}}
{{- $actor := index $options "ray_actor_options" | default dict -}}
{{- $resources := index $actor "resources" | default dict -}}
{{- $_ := set $resources (include "videoserve.groupResource" $group) 1 -}}
{{- $_ := set $actor "resources" $resources -}}
{{- $_ := set $options "ray_actor_options" $actor -}}
{{- $podGpus := include "videoserve.groupGpus" (list $root $group) | float64 -}}
{{- if gt (float64 (index $actor "num_gpus" | default 0)) $podGpus -}}
  {{- fail (printf "serve.deployments.%s asks for num_gpus %v but a %s pod has %v GPUs" $name (index $actor "num_gpus") $group $podGpus) -}}
{{- end -}}
{{- if has $name (list "Denoiser" "Pipeline") -}}
  {{- $options = include "videoserve.denoiserPlacement" (dict "degree" .degree "options" $options "strategy" .defaults.denoiser_placement_strategy) | fromJson -}}
  {{- $replicaGpus := include "videoserve.replicaGpus" $options | float64 -}}
  {{- if gt $replicaGpus $podGpus -}}
    {{- fail (printf "the Denoiser needs %v GPUs on one pod (parallel degree %d, one bundle per rank, STRICT_PACK) but a %s pod has %v (workerGroups.%s.gpus)" $replicaGpus (int .degree) $group $podGpus $group) -}}
  {{- end -}}
{{- end -}}
{{- $named := dict "name" $name -}}
{{- range $key, $value := $options -}}{{- $_ := set $named $key $value -}}{{- end -}}
{{- toJson $named -}}
{{- end -}}

{{/* The whole Serve config (ServeDeploySchema) as JSON. */}}
{{- define "videoserve.serveConfig" -}}
{{- $defaults := .Files.Get "files/serve-defaults.yaml" | fromYaml -}}
{{- $degree := include "videoserve.parallelDegree" . | int -}}
{{- $deployments := list -}}
{{- range $name := include "videoserve.deploymentNames" . | fromJsonArray -}}
  {{- $deployments = append $deployments (include "videoserve.deploymentOptions" (dict "root" $ "name" $name "degree" $degree "defaults" $defaults) | fromJson) -}}
{{- end -}}
{{- $args := include "videoserve.appArgs" . | fromJson -}}
{{- if gt (len (include "videoserve.modelSources" . | fromJsonArray)) 1 -}}
  {{- $stageOptions := dict -}}
  {{- range $kind := include "videoserve.modelStageKinds" . | fromJsonArray -}}
    {{- $options := include "videoserve.deploymentOptions" (dict "root" $ "name" $kind "degree" $degree "defaults" $defaults) | fromJson -}}
    {{- $_ := unset $options "name" -}}
    {{- $_ := set $stageOptions $kind $options -}}
  {{- end -}}
  {{- $_ := set $args "stage_options" (include "videoserve.deepMerge" (dict "base" $stageOptions "extra" (index $args "stage_options")) | fromJson) -}}
{{- end -}}
{{- $application := deepCopy $defaults.application -}}
{{- $_ := set $application "args" $args -}}
{{- $_ := set $application "deployments" $deployments -}}
{{- $http := deepCopy $defaults.http_options -}}
{{- $_ := set $http "port" (int .Values.service.port) -}}
{{- toJson (dict "proxy_location" $defaults.proxy_location "http_options" $http "applications" (list $application)) -}}
{{- end -}}
