"""The Serve config file under deploy/ and the config schema behind it."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from serve.app_builder import deployment_names
from serve.deployment_defaults import DEFAULT_DEPLOYMENT_OPTIONS
from serve.app_config import AppConfig
from cli.main import app
from serve.cluster_launcher import default_serve_config, load_serve_config, with_overrides
from tests.support.repo import REPO_ROOT

DEPLOY_FILE = REPO_ROOT / "deploy" / "videoserve.yaml"


def test_committed_config_is_what_the_code_renders():
    # One source of truth: the file is generated from the builder's defaults.
    rendered = CliRunner().invoke(app, ["config", "render"])
    assert rendered.exit_code == 0
    assert DEPLOY_FILE.read_text() == rendered.output


def test_committed_config_validates_with_rays_own_schemas():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(DEPLOY_FILE.read_text())
    schema = ServeDeploySchema.model_validate(data)
    application = schema.applications[0]
    assert application.import_path == "serve.app_builder:build_app"
    AppConfig.model_validate(application.args)
    for deployment in data["applications"][0]["deployments"]:
        if deployment.get("autoscaling_config"):
            AutoscalingConfig(**deployment["autoscaling_config"])
    assert {d["name"] for d in data["applications"][0]["deployments"]} == set(deployment_names(AppConfig()))


def test_image_to_video_and_prompt_expansion_add_their_deployments():
    config = AppConfig(models=["tiny-i2v"], prompt_expander={"model": "tiny-llm"}, layout="disaggregated")
    names = {d["name"] for d in default_serve_config(config)["applications"][0]["deployments"]}
    assert names == set(DEFAULT_DEPLOYMENT_OPTIONS) - {"Pipeline"}


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(DEPLOY_FILE.read_text())
    merged = with_overrides(load_serve_config(path), args={"models": ["tiny-i2v"], "storage": {"state_dir": "/srv/vs"}},
                            host="0.0.0.0", port=9000)
    assert merged["http_options"] == {"host": "0.0.0.0", "port": 9000}
    args = AppConfig.model_validate(merged["applications"][0]["args"])
    assert (args.model_names(), args.storage.state_dir) == (["tiny-i2v"], "/srv/vs")


@pytest.mark.parametrize(
    "args,field",
    [
        ({"modle": "tiny"}, "modle"),
        ({"jobs": {"max_queued": 0}}, "max_queued"),
        ({"jobs": {"lease_seconds": -1}}, "lease_seconds"),
        ({"storage": {"state_dir": "/x", "extra": 1}}, "extra"),
        ({"api": {"max_request_bytes": 10}}, "max_request_bytes"),
    ],
)
def test_bad_config_names_the_field(tmp_path, args, field):
    with pytest.raises(ValidationError, match=field):
        AppConfig.model_validate(args)
    data = yaml.safe_load(DEPLOY_FILE.read_text())
    data["applications"][0]["args"] = args
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError, match=field):
        load_serve_config(path)


def test_storage_defaults_derive_from_the_state_dir():
    storage = AppConfig(storage={"state_dir": "/srv/videoserve"}).storage
    assert storage.resolved_job_store_url() == "sqlite:////srv/videoserve/jobs.db"
    assert str(storage.resolved_artifact_dir()) == "/srv/videoserve/artifacts"
    assert AppConfig(storage={"job_store_url": "redis://r:6379/0"}).storage.resolved_job_store_url() == "redis://r:6379/0"


@pytest.mark.parametrize("degree", [2, 4])
def test_parallel_degree_gives_the_denoiser_one_packed_bundle_per_rank(degree):
    config = AppConfig(parallel={"tensor": degree})
    deployments = {d["name"]: d for d in default_serve_config(config)["applications"][0]["deployments"]}
    denoiser = deployments["Denoiser"]
    assert denoiser["placement_group_strategy"] == "STRICT_PACK"
    assert denoiser["placement_group_bundles"] == [{"CPU": denoiser["ray_actor_options"]["num_cpus"]}] * degree
    assert "placement_group_bundles" not in deployments["VaeDecoder"]
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(default_serve_config(config))


def test_one_rank_has_no_placement_group():
    config = default_serve_config(AppConfig(layout="disaggregated"))
    denoiser = {d["name"]: d for d in config["applications"][0]["deployments"]}["Denoiser"]
    assert "placement_group_bundles" not in denoiser


def test_tensor_and_sequence_parallel_together_are_refused():
    with pytest.raises(ValidationError, match="tensor or sequence"):
        AppConfig(parallel={"tensor": 2, "sequence": 2})


@pytest.mark.parametrize("parallel,degree,mode", [
    ({"cfg": 2}, 2, "cfg"),
    ({"cfg": 2, "sequence": 2}, 4, "cfg+sequence"),
    ({"cfg": 2, "sequence": 4}, 8, "cfg+sequence"),
    ({"cfg": 1, "tensor": 4}, 4, "tensor"),
])
def test_cfg_parallel_multiplies_the_degree_and_the_bundles(parallel, degree, mode):
    config = AppConfig(parallel=parallel)
    assert (config.parallel.degree, config.parallel.mode) == (degree, mode)
    assert config.parallel.modes == {name: value for name, value in parallel.items() if value > 1}
    denoiser = {d["name"]: d for d in default_serve_config(config)["applications"][0]["deployments"]}["Denoiser"]
    assert len(denoiser["placement_group_bundles"]) == degree
    assert denoiser["placement_group_strategy"] == "STRICT_PACK"


@pytest.mark.parametrize("parallel,field,message", [
    ({"cfg": 3}, "parallel.cfg", "less than or equal to 2"),
    ({"cfg": 0}, "parallel.cfg", "greater than or equal to 1"),
    ({"cfg": 2, "tensor": 2}, "parallel", "cfg 2 combines with sequence, not with tensor"),
    ({"cfg": 2, "tensor": 2, "sequence": 2}, "parallel", "tensor or sequence above 1, not both"),
])
def test_parallel_layouts_no_gang_can_run_are_refused_naming_the_field(parallel, field, message):
    with pytest.raises(ValidationError, match=message) as refused:
        AppConfig(parallel=parallel)
    assert [".".join(map(str, error["loc"])) for error in refused.value.errors()] == [field]


def test_builder_checks_each_mode_of_a_combination(preset_cache, preset_specs):
    from serve.app_builder import build_app

    for model in ("tiny", "tiny-ltx"):  # built here once
        preset_specs[model]
    # Ulysses inside each cfg index splits tiny's 4 heads over its own 8 ranks: refused.
    with pytest.raises(ValueError, match=r"num_attention_heads=4 .*N=8"):
        build_app({"models": ["tiny"], "cache_dir": str(preset_cache), "parallel": {"cfg": 2, "sequence": 8}})
    # CFG parallelism leaves the DiT whole, so LTX takes it, but not Ulysses with it.
    build_app({"models": ["tiny-ltx"], "cache_dir": str(preset_cache), "parallel": {"cfg": 2}})
    with pytest.raises(ValueError, match="parallel.sequence: tiny-ltx is a ltx model"):
        build_app({"models": ["tiny-ltx"], "cache_dir": str(preset_cache), "parallel": {"cfg": 2, "sequence": 2}})


def test_up_takes_cfg_parallel_with_sequence_parallel():
    result = CliRunner().invoke(app, ["up", "--compile", "--cfg-parallel", "2", "--sequence-parallel", "2"])
    assert result.exit_code == 2
    assert "denoiser.compile" in result.output and "parallel.cfg+sequence is 4" in result.output
    result = CliRunner().invoke(app, ["up", "--cfg-parallel", "3"])
    assert result.exit_code == 2 and "--cfg-parallel" in result.output


def test_gpu_bundles_follow_the_replicas_actor_options():
    from serve.denoiser_placement import with_denoiser_placement

    options = {"ray_actor_options": {"num_cpus": 8, "num_gpus": 1, "resources": {"videoserve_dit": 1}}}
    placed = with_denoiser_placement(4, options)
    assert placed["placement_group_bundles"] == [{"CPU": 8, "GPU": 1, "videoserve_dit": 1}] * 4


@pytest.mark.parametrize(
    "options,message",
    [
        ({"placement_group_bundles": [{"CPU": 1}] * 3, "placement_group_strategy": "STRICT_PACK"}, "3 bundles"),
        ({"placement_group_bundles": [{"CPU": 1}] * 2, "placement_group_strategy": "SPREAD"}, "STRICT_PACK"),
        ({"placement_group_bundles": [{"CPU": 1}] * 2, "placement_group_strategy": "STRICT_PACK",
          "ray_actor_options": {"num_cpus": 1, "num_gpus": 1}}, "first bundle"),
        ({"placement_group_bundles": [{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 2}],
          "placement_group_strategy": "STRICT_PACK"}, "different GPU counts"),
    ],
)
def test_denoiser_bundles_that_disagree_with_the_degree_are_refused(options, message):
    from serve.denoiser_placement import PlacementMismatch, with_denoiser_placement

    with pytest.raises(PlacementMismatch, match=message):
        with_denoiser_placement(2, options)


def test_config_file_with_wrong_bundle_count_is_refused_by_up(tmp_path):
    data = default_serve_config(AppConfig(layout="disaggregated"))  # a gang needs the Denoiser deployment
    data["applications"][0]["args"] = {"parallel": {"tensor": 2}}
    for deployment in data["applications"][0]["deployments"]:
        if deployment["name"] == "Denoiser":
            deployment["placement_group_bundles"] = [{"CPU": 0.5}] * 3
            deployment["placement_group_strategy"] = "STRICT_PACK"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["up", "--config", str(path)])
    assert result.exit_code == 2
    assert "3 bundles" in result.output and "parallel degree is 2" in result.output


@pytest.mark.parametrize("parallel,field", [({"tensor": 3}, "num_attention_heads"), ({"sequence": 8}, "num_attention_heads")])
def test_builder_refuses_a_degree_the_dit_cannot_split(preset_cache, tiny_spec, parallel, field):
    from serve.app_builder import build_app

    with pytest.raises(ValueError, match=field):
        build_app({"models": ["tiny"], "cache_dir": str(preset_cache), "parallel": parallel})


def test_up_refuses_compile_on_a_gang_before_starting_anything():
    result = CliRunner().invoke(app, ["up", "--compile", "--sequence-parallel", "2"])
    assert result.exit_code == 2
    assert "denoiser.compile" in result.output and "parallel.sequence is 2" in result.output


def test_up_refuses_a_directory_of_an_unsupported_pipeline_listing_the_supported_ones(tmp_path):
    import json

    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    result = CliRunner().invoke(app, ["up", "--model", "tiny", "--model", str(tmp_path / "flux")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "FluxPipeline" in output and "LTXPipeline" in output and "WanImageToVideoPipeline" in output


def test_several_models_with_one_name_are_refused_naming_it():
    with pytest.raises(ValidationError, match="tiny named more than once"):
        AppConfig(models=["tiny", {"source": "tiny-i2v", "name": "tiny"}])


def test_config_render_lists_each_models_stages(preset_cache):
    rendered = CliRunner().invoke(app, ["config", "render", "--model", "tiny", "--model", "tiny-ltx",
                                        "--layout", "disaggregated"],
                                  env={"VIDEOSERVE_CACHE_DIR": str(preset_cache)})
    assert rendered.exit_code == 0, rendered.output
    data = yaml.safe_load(rendered.stdout)
    names = [deployment["name"] for deployment in data["applications"][0]["deployments"]]
    assert names == ["VideoAPI", "TextEncoder-tiny", "TextEncoder-tiny-ltx", "ImageConditioner-tiny-ltx",
                     "Denoiser-tiny", "Denoiser-tiny-ltx", "VaeDecoder-tiny", "VaeDecoder-tiny-ltx", "PostProcessor"]
    assert AppConfig.model_validate(data["applications"][0]["args"]).model_names() == ["tiny", "tiny-ltx"]


def test_a_config_files_deployment_fields_replace_the_codes_and_its_runtime_env_reaches_every_replica():
    from serve.app_builder import with_config_file_options

    defaults = {"VideoAPI": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
                "Denoiser": {"autoscaling_config": {"min_replicas": 1}, "ray_actor_options": {"num_cpus": 0.5,
                                                                                             "memory": 10}}}
    merged = with_config_file_options(
        defaults,
        {"Denoiser": {"num_replicas": 2, "autoscaling_config": None, "ray_actor_options": {"num_cpus": 2}}},
        {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
    )
    assert merged["Denoiser"]["num_replicas"] == 2 and merged["Denoiser"]["autoscaling_config"] is None
    # ray_actor_options is replaced whole, as Serve replaces it: the code's memory is gone.
    assert merged["Denoiser"]["ray_actor_options"] == {"num_cpus": 2,
                                                       "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    assert merged["VideoAPI"]["ray_actor_options"]["runtime_env"] == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    assert defaults["Denoiser"]["autoscaling_config"] == {"min_replicas": 1}  # the defaults are not modified


def test_a_config_file_naming_a_deployment_the_app_lacks_is_refused_naming_it():
    from serve.app_builder import with_config_file_options

    with pytest.raises(ValueError, match="deployments: Denoisr not in this application"):
        with_config_file_options({"Denoiser": {}}, {"Denoisr": {"num_replicas": 1}}, None)


def test_videoserve_up_refuses_a_config_whose_application_is_not_videoserves():
    from serve.cluster_launcher import application_from_config

    with pytest.raises(ValueError, match="videoserve starts serve.app_builder:build_app"):
        application_from_config({"name": "other", "import_path": "someone.else:app"})
