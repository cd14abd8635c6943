"""The Serve config file under deploy/ and the config schema behind it."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from serve.app_builder import DEFAULT_DEPLOYMENT_OPTIONS, deployment_names
from serve.app_config import AppConfig
from serve.cli import app
from serve.cluster_launcher import default_serve_config, load_serve_config, with_overrides
from tests.conftest import REPO_ROOT

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
    config = AppConfig(model="tiny-i2v", prompt_expander={"model": "tiny-llm"})
    names = {d["name"] for d in default_serve_config(config)["applications"][0]["deployments"]}
    assert names == set(DEFAULT_DEPLOYMENT_OPTIONS)


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(DEPLOY_FILE.read_text())
    merged = with_overrides(load_serve_config(path), args={"model": "tiny-i2v", "storage": {"state_dir": "/srv/vs"}},
                            host="0.0.0.0", port=9000)
    assert merged["http_options"] == {"host": "0.0.0.0", "port": 9000}
    args = AppConfig.model_validate(merged["applications"][0]["args"])
    assert (args.model, args.storage.state_dir) == ("tiny-i2v", "/srv/vs")


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
