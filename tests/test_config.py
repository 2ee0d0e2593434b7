"""destinations.toml: env references, validation errors that name the file, table and key."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from destinations import ConfigurationError
from destinations.config import duration, load_config, parse_config

SCRIPT = shutil.which("destinations", path=str(Path(sys.executable).parent)) or "destinations"

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-config-4a5b6c7d8e"
ENV = {
    "SEGMENTIFY_API_KEY": SECRET,
    "DENGAGE_API_KEY": "d-key",
    "DENGAGE_DATA_CENTER_URL": "https://dce1.dengage.example",
    "WIGZO_ORG_TOKEN": "org",
    "ESPUTNIK_API_KEY": "e-key",
}


def test_the_example_file_documents_every_key_and_loads() -> None:
    config = load_config(ROOT / "examples" / "destinations.toml", environ=ENV)
    assert sorted(config.destinations) == ["shop-dengage", "shop-esputnik", "shop-segmentify", "shop-wigzo"]
    assert config.destinations["shop-segmentify"].settings.apiKey.get_secret_value() == SECRET
    assert config.outbox.retry_window == 4 * 3600
    assert config.outbox.lease_seconds == 45
    assert config.server.write_keys == []  # "${SEGMENT_WRITE_KEY:-}" unset: no keys
    text = (ROOT / "examples" / "destinations.toml").read_text()
    from destinations.config import OutboxConfig, RudderConfig, ServerConfig

    for key in [*OutboxConfig.model_fields, *ServerConfig.model_fields, *RudderConfig.model_fields]:
        assert f"{key} =" in text, f"examples/destinations.toml does not document {key}"


def test_missing_environment_variable_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        '[destinations.shop]\ntype = "segmentify"\napiKey = "${NOPE}"\ndataCenterUrl = "https://x.example"\n'
    )
    with pytest.raises(
        ConfigurationError, match=r"\[destinations\.shop\] apiKey: environment variable NOPE is not set"
    ):
        load_config(path, environ={})


def test_bad_destination_settings_name_file_table_and_key(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(f'[destinations.shop]\ntype = "segmentify"\napiKey = "{SECRET}"\ndataCenterUrl = "ftp://x"\n')
    with pytest.raises(ConfigurationError) as info:
        load_config(path, environ={})
    assert f"{path}: [destinations.shop] segmentify settings: dataCenterUrl must be an http(s) URL" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"outbox": {"batch_size": 0}}, "[outbox] batch_size must be 1 or more"),
        ({"outbox": {"retry_window": "soon"}}, "[outbox] retry_window must be a duration"),
        ({"outbox": {"colour": "red"}}, "[outbox] colour is not a setting of this table"),
        ({"outbox": {"concurrency": "four"}}, "[outbox] concurrency must be a whole number"),
        ({"server": {"delivery": "later"}}, "[server] delivery must be one of 'outbox' or 'direct'"),
        ({"servers": {}}, "unknown table [servers]"),
        ({"destinations": {"shop": {"apiKey": "k"}}}, "[destinations.shop] type is required"),
        ({"destinations": {"shop": {"type": "segmentfy"}}}, "unknown destination 'segmentfy'"),
        ({"destinations": {"shop": "segmentify"}}, "[destinations.shop] must be a table"),
    ],
)
def test_validation_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_config(data, "d.toml", environ={})
    assert message in str(info.value)


def problems_of(data: dict) -> list[str]:
    """The problems `parse_config` names for `data` (file d.toml), whose message is them joined."""
    with pytest.raises(ConfigurationError) as info:
        parse_config(data, "d.toml", environ={})
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """A file with problems in several tables and instances, and several in one: each is named, a line each (the
    library's message joins them), never the first alone. A key whose variable is not set is named for that, and the
    other keys of its table are still checked; `outbox` commands still leave bad instances out."""
    data = {
        "servers": {},
        "sever": {},
        "outbox": {"batch_size": 0, "concurrency": "four"},
        "server": {"delivery": "later", "write_keys": ["${NO_KEY}"]},
        "destinations": {
            "shop": {"type": "segmentify", "apiKey": SECRET, "dataCenterUrl": "ftp://x", "devise": "PC"},
            "good": {"type": "segmentify", "apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com"},
            "other": {"type": "wigzo", "orgToken": "${NOPE}", "token": SECRET, "baseUrl": "not a url"},
        },
    }
    problems = problems_of(data)
    assert problems == [
        "d.toml: unknown table [servers] (known: server, outbox, destinations, rudder, debugger)",
        "d.toml: unknown table [sever] (known: server, outbox, destinations, rudder, debugger)",
        "d.toml: [server] write_keys[0]: environment variable NO_KEY is not set",
        "d.toml: [server] delivery must be one of 'outbox' or 'direct'",
        "d.toml: [outbox] batch_size must be 1 or more",
        "d.toml: [outbox] concurrency must be a whole number",
        "d.toml: [destinations.shop] segmentify settings: dataCenterUrl must be an http(s) URL such as"
        " https://host.example.com",
        "d.toml: [destinations.shop] segmentify settings: devise is not a setting of this destination",
        "d.toml: [destinations.other] orgToken: environment variable NOPE is not set",
        "d.toml: [destinations.other] wigzo settings: baseUrl must be an http(s) URL such as https://host.example.com",
    ]
    assert SECRET not in "".join(problems)
    # Without the file's own problems, the commands that read rows alone leave the bad instances out, named.
    rows_only = {"destinations": data["destinations"]}
    config = parse_config(rows_only, "d.toml", environ={}, instances_needed=False)
    assert sorted(config.destinations) == ["good"]
    assert sorted(config.unconfigured) == ["other", "shop"]
    assert config.unconfigured["other"].startswith("d.toml: [destinations.other] orgToken: environment variable NOPE")

    path = tmp_path / "d.toml"
    path.write_text('[outbox]\nbatch_size = 0\n[destinations.shop]\ntype = "segmentfy"\n')
    res = subprocess.run([SCRIPT, "outbox", "drain", "--config", str(path)], capture_output=True, text=True,
                         check=False, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "destinations outbox: 2 problems:",
        f"  {path}: [outbox] batch_size must be 1 or more",
        f"  {path}: [destinations.shop] unknown destination 'segmentfy'; known: dengage, esputnik, segmentify, wigzo",
    ]
    # A destination's own settings, given alone (not a file): one line, naming the type, as before.
    settings = '{"apiKey": "", "dataCenterUrl": "ftp://x"}'
    res = subprocess.run([SCRIPT, "transform", "segmentify", "--settings", settings], input="{}", capture_output=True,
                         text=True, check=False, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.startswith("destinations transform: segmentify settings: apiKey must not be empty; dataCenterUrl")


def test_a_variable_not_set_is_named_and_hides_nothing_else() -> None:
    """A setting whose variable is not set is left out of the checks that would only repeat it (required, checked
    against another setting); a key that is no setting is named for that too; an instance whose optional setting's
    variable is not set is not made with the default in its place; a type whose variable is not set says no more."""
    data = {
        "outbox": {"read_timeout": "${RT}", "lease": 20, "colour": "${COLOUR}"},
        "destinations": {
            "shop": {"type": "${SHOP_TYPE}", "apiKey": "k"},
            "wz": {"type": "wigzo", "orgToken": "o", "token": "t", "baseUrl": "${WIGZO_URL}"},
        },
    }
    assert problems_of(data) == [
        "d.toml: [outbox] read_timeout: environment variable RT is not set",
        "d.toml: [outbox] colour: environment variable COLOUR is not set",
        "d.toml: [outbox] colour is not a setting of this table",
        "d.toml: [destinations.shop] type: environment variable SHOP_TYPE is not set",
        "d.toml: [destinations.wz] baseUrl: environment variable WIGZO_URL is not set",
    ]
    config = parse_config({"destinations": data["destinations"]}, "d.toml", environ={}, instances_needed=False)
    assert config.destinations == {}
    assert config.unconfigured["wz"] == "d.toml: [destinations.wz] baseUrl: environment variable WIGZO_URL is not set"


def test_a_variable_not_set_hides_no_problem_that_only_mentions_its_setting() -> None:
    """`[server] host` left out does not hide `cors_origins`' problem, whose rule says `scheme://host[:port]`."""
    problems = problems_of({"server": {"host": "${HOST}", "cors_origins": ["ftp://x"]}})
    assert problems[0] == "d.toml: [server] host: environment variable HOST is not set"
    assert len(problems) == 2
    assert problems[1].startswith("d.toml: [server] cors_origins")


def test_a_line_break_in_a_quoted_key_stays_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[outbox]\n"a\\nb" = 1\n')
    res = subprocess.run([SCRIPT, "outbox", "drain", "--config", str(path)], capture_output=True, text=True,
                         check=False, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"destinations outbox: {path}: [outbox] a\\nb is not a setting of this table"]


def test_not_toml_and_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[outbox\npath = 1")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (1.5, 1.5), ("90s", 90.0), ("15m", 900.0), ("4h", 14400.0), ("1d", 86400.0), ("250ms", 0.25)],
)
def test_durations(value: object, seconds: float) -> None:
    assert duration(value) == seconds


def test_two_instances_of_one_type() -> None:
    config = parse_config(
        {
            "destinations": {
                "tr": {"type": "segmentify", "apiKey": "a", "dataCenterUrl": "https://dce1.segmentify.com"},
                "de": {"type": "segmentify", "apiKey": "b", "dataCenterUrl": "https://dce2.segmentify.com"},
            }
        },
        environ={},
    )
    assert config.destinations["tr"].settings.apiKey.get_secret_value() == "a"
    assert config.destinations["de"].settings.dataCenterUrl == "https://dce2.segmentify.com"


def test_a_lease_shorter_than_a_call_is_refused_naming_the_key() -> None:
    from destinations.config import parse_config

    with pytest.raises(
        ConfigurationError, match=r"\[outbox\] lease must be longer than connect_timeout \+ read_timeout"
    ):
        parse_config({"outbox": {"lease": "30s", "read_timeout": "30s"}}, environ={})
    assert parse_config({"outbox": {"lease": "36s"}}, environ={}).outbox.lease == 36


def test_a_missing_variable_names_the_file_and_send_does_not_need_the_servers(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        '[server]\nwrite_keys = ["${NOPE_KEY}"]\n[destinations.shop]\ntype = "wigzo"\norgToken = "${ORG}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match=r"d\.toml: \[server\] write_keys\[0\]: environment variable NOPE_KEY"):
        load_config(path, environ={"ORG": "o"})
    # `send` and `outbox` never use the server's secrets: an unset one there counts as empty.
    config = load_config(path, environ={"ORG": "o"}, server_needed=False)
    assert config.server.write_keys == []
    with pytest.raises(ConfigurationError, match=r"d\.toml: \[destinations\.shop\] orgToken: environment variable ORG"):
        load_config(path, environ={}, server_needed=False)
