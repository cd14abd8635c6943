{{/*
The Denoiser's parallel degree and placement-group bundles, derived exactly as
serve/app_config.py (ParallelConfig) and serve/denoiser_placement.py derive them
(tests/test_helm_chart.py checks the two agree):

- one bundle per rank, each holding what the replica actor itself asks for (CPU num_cpus,
  default 1; GPU num_gpus when non-zero; plus its custom resources), packed on one node
  (STRICT_PACK, the ranks exchange activations every step); nothing added for degree 1;
- bundles already given in serve.deployments.Denoiser are kept only when they agree with
  the degree: one per rank, STRICT_PACK above one rank, the first holding the replica's
  own resources, and the same GPU count in every one.
*/}}

{{/*
The parallel degree of a Denoiser replica, as ParallelConfig.degree computes it
(engine/parallel/parallel_layout.py): cfg x max(tensor, sequence), with tensor and
sequence not both above 1 and cfg 2 combined with sequence only.
*/}}
{{- define "videoserve.parallelDegree" -}}
{{- $args := include "videoserve.appArgs" . | fromJson -}}
{{- $tensor := int (dig "parallel" "tensor" 1 $args) -}}
{{- $sequence := int (dig "parallel" "sequence" 1 $args) -}}
{{- $cfg := int (dig "parallel" "cfg" 1 $args) -}}
{{- if and (gt $tensor 1) (gt $sequence 1) -}}
  {{- fail "serve.args.parallel: set tensor or sequence above 1, not both" -}}
{{- end -}}
{{- if not (has $cfg (list 1 2)) -}}
  {{- fail (printf "serve.args.parallel.cfg must be 1 or 2 (one conditional and one unconditional side), not %d" $cfg) -}}
{{- end -}}
{{- if and (gt $cfg 1) (gt $tensor 1) -}}
  {{- fail "serve.args.parallel: cfg 2 combines with sequence, not with tensor; set tensor to 1 (and use sequence) or cfg to 1" -}}
{{- end -}}
{{- mul $cfg (max $tensor $sequence) -}}
{{- end -}}

{{/* rank_bundle(ray_actor_options) as JSON. */}}
{{- define "videoserve.rankBundle" -}}
{{- $actor := . | default dict -}}
{{- $bundle := dict "CPU" 1 -}}
{{- if hasKey $actor "num_cpus" -}}{{- $_ := set $bundle "CPU" (index $actor "num_cpus") -}}{{- end -}}
{{- if index $actor "num_gpus" -}}{{- $_ := set $bundle "GPU" (index $actor "num_gpus") -}}{{- end -}}
{{- range $name, $amount := (index $actor "resources" | default dict) -}}
{{- $_ := set $bundle $name $amount -}}
{{- end -}}
{{- toJson $bundle -}}
{{- end -}}

{{/*
with_denoiser_placement(degree, options) as JSON. Args: dict "degree" "options" "strategy".
*/}}
{{- define "videoserve.denoiserPlacement" -}}
{{- $degree := int .degree -}}
{{- $strategy := .strategy -}}
{{- $options := deepCopy .options -}}
{{- $actor := index $options "ray_actor_options" | default dict -}}
{{- $bundles := index $options "placement_group_bundles" -}}
{{- if kindIs "invalid" $bundles -}}
  {{- if gt $degree 1 -}}
    {{- $derived := list -}}
    {{- range until $degree -}}
      {{- $derived = append $derived (include "videoserve.rankBundle" $actor | fromJson) -}}
    {{- end -}}
    {{- $_ := set $options "placement_group_bundles" $derived -}}
    {{- $_ := set $options "placement_group_strategy" $strategy -}}
  {{- end -}}
{{- else -}}
  {{- if ne (len $bundles) $degree -}}
    {{- fail (printf "serve.deployments.Denoiser.placement_group_bundles has %d bundles but parallel degree (serve.args.parallel) is %d: one bundle per rank (remove the bundles to have them derived)" (len $bundles) $degree) -}}
  {{- end -}}
  {{- $given := index $options "placement_group_strategy" | default "PACK" -}}
  {{- if and (gt $degree 1) (ne $given $strategy) -}}
    {{- fail (printf "serve.deployments.Denoiser.placement_group_strategy must be %s for %d ranks, not %s" $strategy $degree $given) -}}
  {{- end -}}
  {{- if $actor -}}
    {{- $need := include "videoserve.rankBundle" $actor | fromJson -}}
    {{- $first := index $bundles 0 -}}
    {{- $short := dict -}}
    {{- range $name, $amount := $need -}}
      {{- if lt (float64 (index $first $name | default 0)) (float64 $amount) -}}
        {{- $_ := set $short $name $amount -}}
      {{- end -}}
    {{- end -}}
    {{- if $short -}}
      {{- fail (printf "Denoiser ray_actor_options need %s but the first placement_group_bundles entry holds %s: the replica (rank 0) runs in the first bundle" (toJson $short) (toJson $first)) -}}
    {{- end -}}
  {{- end -}}
  {{- $gpuCounts := dict -}}
  {{- range $bundles -}}
    {{- $_ := set $gpuCounts (toString (float64 (index . "GPU" | default 0))) true -}}
  {{- end -}}
  {{- if gt (len $gpuCounts) 1 -}}
    {{- fail (printf "Denoiser placement_group_bundles ask for different GPU counts %s: every rank needs the same" (keys $gpuCounts | sortAlpha | toJson)) -}}
  {{- end -}}
{{- end -}}
{{- toJson $options -}}
{{- end -}}

{{/* GPUs one Denoiser replica takes on its node: all its bundles (STRICT_PACK), or the replica alone. */}}
{{- define "videoserve.replicaGpus" -}}
{{- $options := . -}}
{{- $total := 0.0 -}}
{{- if index $options "placement_group_bundles" -}}
  {{- range (index $options "placement_group_bundles") -}}
    {{- $total = addf $total (index . "GPU" | default 0) -}}
  {{- end -}}
{{- else -}}
  {{- $total = (index $options "ray_actor_options" | default dict).num_gpus | default 0 | float64 -}}
{{- end -}}
{{- $total -}}
{{- end -}}
