"""The configuration file: what it accepts, and the errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.config import ConfigError
from appliance.trail import segments

GOOD = """
[[backend]]
name = "orders"
address = "10.0.0.5"
port = 5432

[[listener]]
listen = "127.0.0.1:6432"
backend = "orders"

[trail]
path = "trail.db"
durability = "power"
checkpoint_events = 50

[capture]
rows = 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "witness.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD))
    assert settings.backends["orders"].address == "10.0.0.5"
    assert settings.listeners[0].port == 6432
    assert settings.trail.path == tmp_path / "trail.db"
    assert settings.trail.signing_key == tmp_path / "trail.db.key"
    assert settings.trail.public_key == tmp_path / "trail.db.key.pub"
    assert settings.trail.durability == "power"
    assert settings.trail.checkpoint_events == 50
    assert settings.capture.rows == 10
    assert (settings.capture.wire, settings.capture.wire_bytes) == (False, 16 << 20)
    wired = config.load(write(tmp_path, GOOD + "wire = true\nwire_bytes = 4096\n")).capture
    assert (wired.wire, wired.wire_bytes) == (True, 4096)


def test_at_most_a_second_or_a_thousand_events_go_unsigned_by_default(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, GOOD.replace("checkpoint_events = 50\n", ""))).trail
    beside = config.TrailSettings.beside(tmp_path / "t.db")
    for trail in (loaded, beside):
        assert (trail.checkpoint_seconds, trail.checkpoint_events) == (1.0, 1000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("port = 5432", "port = 70000"), "backend[0].port: expected an integer from 1 to 65535"),
        (("port = 5432", 'port = "x"'), "backend[0].port"),
        (('address = "10.0.0.5"', 'address = "db.internal"'), "backend[0].address: expected an IP"),
        (('backend = "orders"', 'backend = "billing"'), "listener[0].backend: no backend is named"),
        (
            ('listen = "127.0.0.1:6432"', 'listen = "6432"'),
            "listener[0].listen: expected ADDRESS:PORT",
        ),
        (('durability = "power"', 'durability = "fast"'), "trail.durability: expected one of"),
        (("rows = 10", "rowz = 10"), "capture.rowz: unknown key"),
        (("[capture]", "[capture]\nrows = -1\n[x]"), "unknown key"),
        (("rows = 10", 'wire = "yes"'), "capture.wire: expected true or false, got 'yes'"),
        (("rows = 10", "wire_bytes = 10"), "capture.wire_bytes: expected an integer from 1024"),
    ],
)
def test_errors_name_the_key_and_what_was_wrong(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        config.load(write(tmp_path, GOOD.replace(*change, 1)))
    assert message in str(info.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[[backend]\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "absent.toml")


def test_backend_url() -> None:
    backend = config.parse_backend_url("postgresql://127.0.0.1:5433")
    assert (backend.address, backend.port, backend.protocol) == ("127.0.0.1", 5433, "postgresql")
    with pytest.raises(ConfigError, match="--backend"):
        config.parse_backend_url("mysql://127.0.0.1:3306")


IDENTITY = """
[identity]
unbound = "refuse"
control_socket = "run/control.sock"

[[identity.issuer]]
name = "corp"
issuer = "https://idp.example.test"
audience = "urn:witness"
client_id = "witness-cli"
login_params = { resource = "urn:witness" }
claims = { groups = "roles" }
leeway_seconds = 5

[[identity.binding]]
user = "ci-runner"
issuer = "corp"
subject = "svc-ci"
groups = ["ci"]
"""


def test_identity_issuers_bindings_and_backend_policy(tmp_path: Path) -> None:
    text = GOOD.replace(
        "port = 5432",
        'port = 5432\nallow_groups = ["dba"]\nallow_identities = ["svc-ci"]\n'
        "end_sessions_at_expiry = true",
    )
    settings = config.load(write(tmp_path, text + IDENTITY))
    identity = settings.identity
    assert identity.unbound == "refuse"
    assert identity.control_socket == tmp_path / "run/control.sock"
    (issuer,) = identity.issuers
    assert issuer.audience == ("urn:witness",)
    assert issuer.algorithms == ("RS256", "ES256")
    assert issuer.discovery_url == "https://idp.example.test/.well-known/openid-configuration"
    assert issuer.login_params == (("resource", "urn:witness"),)
    assert (issuer.subject_claim, issuer.groups_claim) == ("sub", "roles")
    assert issuer.leeway == 5.0
    assert issuer.allow_clients == ()  # any client of the issuer
    (static,) = identity.bindings
    assert static.issuer == "https://idp.example.test"  # the issuer's name stands for its iss
    backend = settings.backends["orders"]
    assert backend.allow_groups == ("dba",) and backend.allow_identities == ("svc-ci",)
    assert backend.end_at_expiry and backend.restricted


def test_without_an_identity_table_unbound_connections_are_refused(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD))
    assert settings.identity.unbound == "refuse"
    assert settings.identity.issuers == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('audience = "urn:witness"', 'audience = "urn:witness"\nalgorithms = ["HS256"]'),
            "identity.issuer[0].algorithms[0]: 'HS256' is not allowed",
        ),
        (
            ('audience = "urn:witness"', 'audience = "urn:witness"\nalgorithms = ["none"]'),
            "'none' and HS* are never accepted",
        ),
        (
            ('issuer = "https://idp.example.test"', 'issuer = "idp.example.test"'),
            "identity.issuer[0].issuer: expected an https:// (or http://) URL",
        ),
        (('unbound = "refuse"', 'unbound = "maybe"'), "identity.unbound: expected one of"),
        (
            ('claims = { groups = "roles" }', 'claims = { team = "x" }'),
            "identity.issuer[0].claims.team: unknown key",
        ),
        (('subject = "svc-ci"', 'subject = ""'), "identity.binding[0].subject"),
        (('audience = "urn:witness"', "audience = []"), "identity.issuer[0].audience"),
        (
            ("leeway_seconds = 5", "leeway_seconds = 5\nallow_clients = []"),
            "identity.issuer[0].allow_clients: expected a non-empty list, got []",
        ),
        (
            ("leeway_seconds = 5", 'leeway_seconds = 5\nallow_clients = "agent-ci"'),
            "identity.issuer[0].allow_clients: expected a non-empty list, got 'agent-ci'",
        ),
        (
            ("leeway_seconds = 5", 'leeway_seconds = 5\nallow_clients = ["witness-cli", 7]'),
            "identity.issuer[0].allow_clients[1]: expected a non-empty string, got 7",
        ),
        (
            # A second table for the same issuer would be ignored, and its allow_clients with it.
            (
                "[[identity.binding]]",
                '[[identity.issuer]]\nname = "again"\nissuer = "https://idp.example.test"\n'
                'audience = "urn:other"\n\n[[identity.binding]]',
            ),
            "identity.issuer[1].issuer: 'https://idp.example.test' is already trusted by "
            "identity.issuer[0] (one table per issuer)",
        ),
        (
            ("leeway_seconds = 5", 'leeway_seconds = 5\nallow_clients = ["agent-ci"]'),
            "identity.issuer[0].allow_clients: ['agent-ci'] leaves out the client_id "
            "'witness-cli', so no `witness login` could bind: add it, or remove client_id",
        ),
    ],
)
def test_identity_errors_name_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, GOOD + IDENTITY.replace(*change, 1)))
    assert message in str(info.value)


def test_an_issuer_can_accept_only_the_clients_it_lists(tmp_path: Path) -> None:
    text = IDENTITY.replace(
        "leeway_seconds = 5", 'leeway_seconds = 5\nallow_clients = ["witness-cli", "agent-ci"]'
    )
    (issuer,) = config.load(write(tmp_path, GOOD + text)).identity.issuers
    assert issuer.allow_clients == ("witness-cli", "agent-ci")
    # Without a client_id (tokens only), any list will do.
    text = text.replace('client_id = "witness-cli"\n', "").replace('"witness-cli", ', "")
    (issuer,) = config.load(write(tmp_path, GOOD + text)).identity.issuers
    assert issuer.allow_clients == ("agent-ci",)


ANCHOR = """
[trail.anchor]
dsn = "host=anchor.example.test dbname=witness user=bastion1 password=s3cret-word"
passfile = "anchor.pgpass"
timeout_seconds = 2
"""


def test_an_anchor_is_optional_and_validated(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, GOOD)).trail.anchor is None
    anchor = config.load(write(tmp_path, GOOD + ANCHOR)).trail.anchor
    assert anchor is not None
    assert anchor.dsn.startswith("host=anchor.example.test")
    assert anchor.passfile == tmp_path / "anchor.pgpass"
    assert anchor.bastion == "bastion1"  # the role the DSN logs in as
    assert (anchor.timeout, anchor.retry_max) == (2.0, 60.0)
    named = GOOD + ANCHOR + 'bastion = "db-bastion-7"\n'
    assert config.load(write(tmp_path, named)).trail.anchor.bastion == "db-bastion-7"  # type: ignore[union-attr]
    state = config.load(write(tmp_path, GOOD)).trail.anchor_state
    assert state == tmp_path / "trail.db.anchor"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("dsn = ", "dsm = "), "trail.anchor.dsm: unknown key"),
        (("timeout_seconds = 2", "timeout_seconds = 0"), "trail.anchor.timeout_seconds"),
        (("timeout_seconds = 2", 'retry_max_seconds = "often"'), "trail.anchor.retry_max"),
        (('passfile = "anchor.pgpass"', "passfile = 3"), "trail.anchor.passfile: expected a"),
        (
            ("dbname=witness", "dbname witness"),
            "trail.anchor.dsn: expected a PostgreSQL connection string such as",
        ),
    ],
)
def test_anchor_errors_name_the_key_and_never_the_password(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, GOOD + ANCHOR.replace(*change, 1)))
    assert message in str(info.value)
    assert "s3cret" not in str(info.value)


EXPORTS = """
[[export]]
name = "siem"
format = "cef"
syslog = "siem.example.com:514"
transport = "tcp"
framing = "rfc3164"
identities = ["agent-ci@example.test"]
backends = ["orders"]

[[export]]
name = "chain"
format = "jsonl"
file = "exports/trail.jsonl"
"""


def test_continuous_exports(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD + EXPORTS))
    siem, chain = settings.exports
    assert (siem.name, siem.format, siem.syslog, siem.file) == (
        "siem",
        "cef",
        "siem.example.com:514",
        None,
    )
    assert (siem.transport, siem.framing) == ("tcp", "rfc3164")
    assert (siem.identities, siem.backends) == (("agent-ci@example.test",), ("orders",))
    assert chain.file == tmp_path / "exports" / "trail.jsonl"
    assert (chain.transport, chain.framing, chain.identities) == ("udp", "rfc5424", ())
    assert settings.trail.export_state("siem") == tmp_path / "trail.db.export-siem"
    assert config.load(write(tmp_path, GOOD)).exports == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('format = "cef"', 'format = "xml"'), "export[0].format: expected one of jsonl, ocsf"),
        (('name = "siem"', 'name = "../x"'), "export[0].name: expected 1 to 64 letters"),
        (('name = "chain"', 'name = "siem"'), "export[1].name: 'siem' is defined twice"),
        (('syslog = "siem.example.com:514"', ""), "export[0]: expected either file or syslog"),
        (('file = "exports', 'syslog = "h:1"\nfile = "exports'), "export[1]: expected either"),
        (('syslog = "siem.example.com:514"', 'syslog = "siem"'), "export[0].syslog: expected"),
        (('format = "cef"', 'format = "pcap"'), "export[0].syslog: a pcap export goes to a file"),
        (('transport = "tcp"', 'transport = "tls"'), "export[0].transport: expected one of"),
        (('backends = ["orders"]', 'backends = ["billing"]'), "no backend is named 'billing'"),
        (('name = "siem"', 'name = "siem"\ncolour = 1'), "export[0].colour: unknown key"),
    ],
)
def test_export_errors_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, GOOD + EXPORTS.replace(*change, 1)))
    assert message in str(info.value)


def test_the_exports_formats_are_the_configurations() -> None:
    from appliance.export import formats

    assert tuple(formats.FORMATS) == config.EXPORT_FORMATS
    assert tuple(n for n, f in formats.FORMATS.items() if f.syslog) == config.SYSLOG_FORMATS


def test_sealing_and_retiring(tmp_path: Path) -> None:
    trail = config.load(write(tmp_path, GOOD)).trail
    assert (trail.segment_bytes, trail.retire) == (256 << 20, None)  # kept: nothing holds them
    assert segments.directory(trail.path) == tmp_path / "trail.db.sealed"
    central = '\n[trail.central]\ndsn = "host=central dbname=witness user=b1"\n'
    with_central = config.load(write(tmp_path, GOOD + central)).trail
    assert with_central.retire == "central"  # by default, once a central store holds them
    kept = GOOD.replace("checkpoint_events = 50", 'checkpoint_events = 50\nretire = "never"')
    assert config.load(write(tmp_path, kept + central)).trail.retire is None
    by_export = GOOD.replace("checkpoint_events = 50", 'segment_mb = 64\nretire = "export:chain"')
    loaded = config.load(write(tmp_path, by_export + EXPORTS)).trail
    assert (loaded.segment_bytes, loaded.retire) == (64 << 20, "export:chain")


@pytest.mark.parametrize(
    ("setting", "tables", "message"),
    [
        ('retire = "central"', "", "trail.retire: 'central' needs [trail.central]"),
        ('retire = "s3"', "", "trail.retire: expected 'central', 'export:NAME' or 'never'"),
        ('retire = "export:nowhere"', "", "trail.retire: no [[export]] is named 'nowhere'"),
        ('retire = "export:siem"', EXPORTS, "export 'siem' cannot retire segments: only a jsonl"),
        ("segment_mb = -1", "", "trail.segment_mb"),
    ],
)
def test_sealing_errors_name_the_key(
    tmp_path: Path, setting: str, tables: str, message: str
) -> None:
    text = GOOD.replace("checkpoint_events = 50", f"checkpoint_events = 50\n{setting}")
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text + tables))
    assert message in str(info.value)


def test_the_readmes_complete_file_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = readme[readme.index("A complete file, with every key") :]
    block = after[after.index("```toml\n") + 8 :]
    settings = config.load(write(tmp_path, block[: block.index("```")]))
    assert settings.trail.segment_bytes == 256 << 20 and settings.trail.retire is None
    assert [e.name for e in settings.exports]
