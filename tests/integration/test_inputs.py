"""Bad input: every error names what was wrong and where, exits non-zero, and
leaves what is stored untouched."""
import json

from conftest import ROOT


def test_unknown_config_key_names_file_and_line(gantry):
    gantry.write_config("prot = 5\n")
    p = gantry("get", "services", check=2)
    assert f"{gantry.config}:" in p.stderr and "prot" in p.stderr and "unknown" in p.stderr


def test_bad_config_value_and_env(gantry):
    gantry.config.write_text("[store]\nbackend = floppy\n")
    p = gantry("get", "services", check=2)
    assert f"{gantry.config}:2" in p.stderr and "floppy" in p.stderr
    gantry.write_config()
    gantry.extra = {"GANTRY_RUNNER_OUTPUT_LIMIT": "lots"}
    p = gantry("get", "services", check=2)
    assert "GANTRY_RUNNER_OUTPUT_LIMIT" in p.stderr


def test_missing_config_file(gantry, tmp_path):
    p = gantry("--config", tmp_path / "nope.conf", "get", "services", check=2)
    assert "nope.conf" in p.stderr


def test_seed_style_config_is_accepted(gantry, tmp_path):
    # section names, quoting and keys as the seed documents write them
    gantry.config.write_text(f"""\
[application]
#mode = local
cluster_id = cluster_1
working_dir = "{gantry.work}"

[server]
#api_key_expiration = 1440
listen_address      = 0.0.0.0
use_tls             = false

[store]
backend = local

[secrets]
encrypt_key_file = "{tmp_path}/k.key"

[log]
level = INFO
console_json = false

[runner]
python = /usr/bin/python3
""")
    (tmp_path / "k.key").write_text("x" * 64 + "\n")
    gantry("get", "services", check=0)
    p = gantry("version", "--show-config", check=0)
    assert f"{gantry.config}" in p.stdout and "cluster_1" in p.stdout


def test_show_config_names_sources(gantry):
    gantry.extra = {"GANTRY_APPLICATION_CLUSTER_ID": "c9"}
    p = gantry("version", "--show-config", check=0)
    assert "c9" in p.stdout and "GANTRY_APPLICATION_CLUSTER_ID" in p.stdout
    assert "default" in p.stdout


def test_bad_json_schema_and_invalid_schema(gantry, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "type": "object",\n  "properties": {\n    "x": {"type": }\n  }\n}\n')
    p = gantry("create", "decorator", "d", "--schema", f"@{bad}", check=2)
    assert f"{bad}:4:" in p.stderr, p.stderr
    p = gantry("create", "decorator", "d", "--schema", '{"type": "object", "maximum": "ten"}',
               check=2)
    assert "$.schema.maximum" in p.stderr
    p = gantry("create", "decorator", "d", "--schema", '{"pattern": "(unclosed"}', check=2)
    assert "pattern" in p.stderr
    assert gantry.json("get", "decorators")["items"] == []


def test_schema_violation_names_the_path(gantry, scripts_repo):
    repo = scripts_repo("x.sh", "echo ran\n")
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "decorator", "d", "--schema", json.dumps({
        "type": "object",
        "properties": {"port": {"type": "integer", "maximum": 65535},
                       "hosts": {"type": "array", "items": {"format": "ipv4"}}},
        "required": ["port"], "additionalProperties": False}), check=0)
    gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "x.sh",
           "--decorator", "d", check=0)
    p = gantry("run", "service", "s", "--set", "port=70000", check=2)
    assert "$.inputs.port" in p.stderr and "65535" in p.stderr
    p = gantry("run", "service", "s", "--inputs", '{"port": 1, "hosts": ["10.0.0.1", "999.1.1.1"]}',
               check=2)
    assert "$.inputs.hosts[1]" in p.stderr
    p = gantry("run", "service", "s", "--set", "port=1", "--set", "extra=1", check=2)
    assert "extra" in p.stderr
    p = gantry("run", "service", "s", "--set", "port=abc", check=2)
    assert "$.inputs.port" in p.stderr
    # nothing ran
    assert gantry.json("get", "executions")["items"] == []
    assert gantry("run", "service", "s", "--set", "port=22", check=0).stdout.startswith("stdout:\nran")


def test_references_and_refused_deletes(gantry, scripts_repo):
    repo = scripts_repo("x.sh", "echo x\n")
    p = gantry("create", "service", "executable", "s", "--repository", "nope", "--filename",
               "x.sh", check=2)
    assert 'repository "nope" does not exist' in p.stderr
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "secret", "k", "--value", "v", check=0)
    gantry("create", "decorator", "d", "--schema", "{}", check=0)
    gantry("create", "service", "executable", "s1", "--repository", "r", "--filename", "x.sh",
           "--decorator", "d", "--secret", "name=k,type=env,target=K", check=0)
    gantry("create", "service", "executable", "s2", "--repository", "r", "--filename", "x.sh",
           check=0)
    p = gantry("delete", "repository", "r", check=2)
    assert "service s1" in p.stderr and "service s2" in p.stderr
    p = gantry("delete", "secret", "k", check=2)
    assert "service s1" in p.stderr
    p = gantry("delete", "decorator", "d", check=2)
    assert "service s1" in p.stderr
    p = gantry("create", "repository", "r", "--url", repo, check=2)
    assert "already exists" in p.stderr
    gantry("delete", "service", "s1", check=0)
    gantry("delete", "service", "s2", check=0)
    for kind, name in (("repository", "r"), ("secret", "k"), ("decorator", "d")):
        gantry("delete", kind, name, check=0)
    p = gantry("describe", "repository", "r", check=2)
    assert 'repository "r" not found' in p.stderr


def test_bad_flags_and_names(gantry):
    p = gantry("create", "service", "python-script", "s", "--repository", "r", "--timeout", "soon",
               check=2)
    assert "--timeout" in p.stderr
    p = gantry("create", "repository", "bad/name", "--url", "/tmp", check=2)
    assert "not a valid name" in p.stderr
    p = gantry("create", "repository", "r", "--url", "ftp://example.com/repo.git", check=2)
    assert "$.url" in p.stderr
    p = gantry("create", "service", "opentofu-plan", "t", "--repository", "r", check=2)
    assert "opentofu-plan" in p.stderr and "not supported yet" in p.stderr
    p = gantry("create", "service", "cobol", "t", "--repository", "r", check=2)
    assert "$.type" in p.stderr
    p = gantry("get", "services", "--bogus", check=2)
    assert "--bogus" in p.stderr
    p = gantry("frobnicate", check=2)
    assert "unknown command" in p.stderr
    p = gantry("get", "widgets", check=2)
    assert "widgets" in p.stderr
    p = gantry("run", "service", "s", "--set", "novalue", check=2)
    assert "--set" in p.stderr
    p = gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "x",
               "--env", "1BAD=x", check=2)
    assert "$.env.1BAD" in p.stderr
    p = gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "x",
               "--secret", "name=k,type=file,target=X", check=2)
    assert "$.secrets[0].type" in p.stderr
    p = gantry("-o", "xml", "get", "services", check=2)
    assert "xml" in p.stderr


def test_wrong_or_missing_key_file(gantry, tmp_path, scripts_repo):
    # printed as-is a secret is stored as ***: upper-cased, it shows which value arrived
    repo = scripts_repo("env.sh", 'echo "K=$K" | tr a-z A-Z\n')
    key = tmp_path / "k1.key"
    key.write_text("a" * 64 + "\n")
    gantry.write_config(f"\n[secrets]\nencrypt_key_file = {key}\n")
    gantry("create", "secret", "s", "--value", "hunter2", check=0)
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "service", "executable", "e", "--repository", "r", "--filename", "env.sh",
           "--secret", "name=s,type=env,target=K", check=0)
    assert gantry.json("run", "service", "e")["stdout"] == "K=HUNTER2\n"
    db_before = (gantry.work / "gantry.db").read_bytes()
    # another key: a clear error, nothing ran, the secret is intact
    other = tmp_path / "k2.key"
    other.write_text("b" * 64 + "\n")
    gantry.write_config(f"\n[secrets]\nencrypt_key_file = {other}\n")
    p = gantry("run", "service", "e", check=3)
    assert "another key" in p.stderr and "hunter2" not in p.stderr
    # a configured but missing key file: a clear error naming it, never a new key
    gantry.write_config(f"\n[secrets]\nencrypt_key_file = {tmp_path}/missing.key\n")
    p = gantry("create", "secret", "t", "--value", "x", check=3)
    assert "missing.key" in p.stderr
    assert not (tmp_path / "missing.key").exists()
    gantry.write_config(f"\n[secrets]\nencrypt_key_file = {key}\n")
    assert gantry.json("run", "service", "e")["stdout"] == "K=HUNTER2\n"
    assert len(gantry.json("get", "executions")["items"]) == 2
    del db_before


def test_update_keeps_secret_and_validates(gantry, scripts_repo):
    # printed as-is a secret is stored as ***: upper-cased, it shows which value arrived
    repo = scripts_repo("env.sh", 'echo "K=$K" | tr a-z A-Z\n')
    gantry("create", "secret", "s", "--value", "one", check=0)
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "service", "executable", "e", "--repository", "r", "--filename", "env.sh",
           "--secret", "name=s,type=env,target=K", check=0)
    gantry("update", "secret", "s", "--description", "renamed", check=0)
    assert gantry.json("run", "service", "e")["stdout"] == "K=ONE\n"
    gantry("update", "secret", "s", "--value", "two", check=0)
    assert gantry.json("run", "service", "e")["stdout"] == "K=TWO\n"
    p = gantry("update", "service", "e", "--timeout", "-5", check=2)
    assert "--timeout" in p.stderr
    p = gantry("update", "service", "e", "--decorator", "nope", check=2)
    assert 'decorator "nope" does not exist' in p.stderr
    assert "decorator" not in gantry.json("describe", "service", "e")


def test_help_and_completion(gantry, tmp_path):
    import subprocess
    p = gantry("--help", check=0)
    assert "create service" in p.stdout and "run service" in p.stdout
    p = gantry("create", "service", "--help", check=0)
    assert "--repository" in p.stdout and "--arg-format" in p.stdout
    for shell in ("bash", "zsh", "fish"):
        out = gantry("completion", shell, check=0).stdout
        assert "gantry" in out
        assert ("-l repository" if shell == "fish" else "--repository") in out
    script = tmp_path / "c.bash"
    script.write_text(gantry("completion", "bash", check=0).stdout)
    subprocess.run(["bash", "-n", str(script)], check=True)
    r = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=(gantry create se); COMP_CWORD=2;"
                        " _gantry; echo ${COMPREPLY[@]}"], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["service", "secret"]
    gantry("completion", "tcsh", check=2)
