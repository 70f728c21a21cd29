"""gantry db export / db import: service files between stores, in local mode and in
client mode against a running stack, with the checks a hand-written or hostile file
needs."""
import json
import os
import re
import textwrap

import pytest

from conftest import ROOT, ClientGantry, Gantry

SECRET_VALUE = "s3cr3t-VALUE-never-exported"


def populate(g, repo):
    """One of each kind and every kind of field, made with the ordinary commands."""
    g("create", "secret", "token", input=SECRET_VALUE + "\n", check=0)
    g("create", "secret", "deploy-key", input="KEY-" + SECRET_VALUE + "\n", check=0)
    g("create", "repository", "examples", "--url", repo, "--reference", "main",
      "--description", "the examples", check=0)
    g("create", "repository", "keyed", "--url", "git@git.example.com:net/ops.git",
      "--private-key-name", "deploy-key", check=0)
    g("create", "decorator", "hello-inputs", "--schema", f"@{ROOT}/examples/python/decorator.json",
      "--description", "yes: a description with: colons", check=0)
    g("create", "service", "executable", "report", "--repository", "examples",
      "--working-dir", "shell", "--filename", "report.sh",
      "--secret", "name=token,type=env,target=API_TOKEN", "--arg-format", "{key}={value}",
      "--env", "REGION=eu", "--timeout", "60", "--retries", "1", "--allow-secret", "deploy-key",
      check=0)
    g("create", "service", "ansible-playbook", "site", "--repository", "examples",
      "--working-dir", "ansible", "--playbook", "site.yml", "--inventory", "inventory.ini",
      "--extra-vars", '{"checks": ["uname"], "target": "default"}', check=0)
    g("create", "service", "python-script", "hello", "--repository", "examples",
      "--working-dir", "python", "--filename", "hello.py", "--decorator", "hello-inputs",
      "--description", "true", check=0)


def resources(g):
    """What the store holds, as the API shows it, without what the server adds."""
    out = {}
    for kind in ("decorators", "repositories", "services"):
        items = g.json("get", kind)["items"]
        for it in items:
            for k in ("revision", "created_at", "updated_at"):
                it.pop(k, None)
        out[kind] = sorted(items, key=lambda x: x["name"])
    return out


def fresh_local(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    return Gantry(d)


def test_round_trip_into_an_empty_store(any_gantry, examples_repo, tmp_path):
    """Export, import into an empty local store: the same resources, the same file;
    from a server too (client mode) into local mode."""
    src = any_gantry
    populate(src, examples_repo)
    out = tmp_path / "export.yml"
    p = src("db", "export", "--file", out, check=0)
    assert "exported 1 decorator, 2 repositories and 3 services to" in p.stderr
    text = out.read_text()
    assert SECRET_VALUE not in text
    assert text.startswith("decorators:\n")
    assert "private-key-name: deploy-key" in text
    assert "working-directory: shell" in text
    # the same file on standard output, and as JSON
    assert src("db", "export", check=0).stdout == text
    as_json = json.loads(src("db", "export", "-o", "json", check=0).stdout)
    assert [s["name"] for s in as_json["services"]] == ["hello", "report", "site"]
    assert as_json["services"][2]["runtime"] == {
        "inventory": ["inventory.ini"], "extra-vars": {"checks": ["uname"], "target": "default"}}

    dst = fresh_local(tmp_path, "dst")
    # secrets are never in the file: the target needs its own, by the same names
    p = dst("db", "import", out, check=2)
    assert 'secret "deploy-key" is not in the store' in p.stderr
    assert "nothing was written" in p.stderr
    assert dst.json("get", "repositories")["items"] == []
    dst("create", "secret", "token", input="other-token\n", check=0)
    dst("create", "secret", "deploy-key", input="other-key\n", check=0)
    p = dst("db", "import", out, check=0)
    assert re.search(r"service\s+report\s+added", p.stdout), p.stdout
    assert resources(dst) == resources(src)
    assert dst("db", "export", check=0).stdout == text
    # the JSON export imports to the same
    jf = tmp_path / "export.json"
    jf.write_text(json.dumps(as_json))
    third = fresh_local(tmp_path, "third")
    third("create", "secret", "token", input="t\n", check=0)
    third("create", "secret", "deploy-key", input="k\n", check=0)
    third("db", "import", jf, check=0)
    assert resources(third) == resources(src)


def test_imported_service_runs(gantry, examples_repo, tmp_path):
    """What an import creates is what create makes: it runs."""
    populate(gantry, examples_repo)
    out = tmp_path / "s.yml"
    gantry("db", "export", "--file", out, check=0)
    dst = fresh_local(tmp_path, "dst")
    dst("create", "secret", "token", input="tok-123456\n", check=0)
    dst("create", "secret", "deploy-key", input="k\n", check=0)
    dst("db", "import", out, check=0)
    p = dst("run", "service", "report", "--set", "a=1", check=0)
    assert "[a=1]" in p.stdout


def test_local_file_into_a_server(client, examples_repo, tmp_path):
    """A file exported in local mode imports into a server through its REST API."""
    local = fresh_local(tmp_path, "local")
    populate(local, examples_repo)
    out = tmp_path / "local.yml"
    local("db", "export", "--file", out, check=0)
    client("create", "secret", "token", input="t\n", check=0)
    client("create", "secret", "deploy-key", input="k\n", check=0)
    assert "add" in client("db", "import", out, "--check", check=0).stdout
    client("db", "import", out, check=0)
    assert resources(client) == resources(local)
    assert client("db", "export", check=0).stdout == out.read_text()


def test_check_conflict_force(any_gantry, examples_repo, tmp_path):
    g = any_gantry
    populate(g, examples_repo)
    out = tmp_path / "s.yml"
    g("db", "export", "--file", out, check=0)
    # nothing differs: all unchanged, and a plain import is a no-op
    p = g("db", "import", out, "--check", check=0)
    assert p.stdout.count("unchanged") == 6, p.stdout
    g("db", "import", out, check=0)
    # the store moves on: a conflict, refused whole
    g("update", "service", "report", "--description", "changed here", check=0)
    g("delete", "service", "site", check=0)
    checked = g.json("db", "import", out, "--check")
    actions = {(i["kind"], i["name"]): i["action"] for i in checked["items"]}
    assert actions[("service", "report")] == "conflict"
    assert actions[("service", "site")] == "add"
    assert actions[("decorator", "hello-inputs")] == "unchanged"
    p = g("db", "import", out, check=2)
    assert "1 resource already exists and differs from the file (service report); nothing was " \
           "written" in p.stderr, p.stderr
    assert "site" not in [s["name"] for s in g.json("get", "services")["items"]]
    # --force: a replacement, and the field the file does not have is gone
    checked = g.json("db", "import", out, "--check", "--force")
    assert {i["name"]: i["action"] for i in checked["items"]}["report"] == "replacement"
    g("db", "import", out, "--force", check=0)
    report = g.json("describe", "service", "report")
    assert "description" not in report
    assert "site" in [s["name"] for s in g.json("get", "services")["items"]]
    p = g("db", "import", out, "--validate", check=0)
    assert p.stdout == f"{out}: valid: 1 decorator, 2 repositories, 3 services\n"


def test_errors_name_file_line_and_field(gantry, tmp_path):
    f = tmp_path / "services.yml"
    f.write_text(textwrap.dedent("""\
        repositories:
          - name: here
            url: /srv/here
        services:
          - name: good
            type: executable
            repository: here
            filename: run.sh
          - name: bad
            type: executable
            filename: run.sh
            repository: nope
        """))
    p = gantry("db", "import", f, check=2)
    assert f"{f}:12: services[1].repository: repository \"nope\" is neither in this file nor " \
           "in the store" in p.stderr, p.stderr
    # --validate checks the same, and neither writes anything
    p = gantry("db", "import", f, "--validate", check=2)
    assert "services[1].repository" in p.stderr
    assert gantry.json("get", "repositories")["items"] == []
    f.write_text("services:\n  - name: x\n    type: shell-script\n    repository: r\n    colour: red\n")
    p = gantry("db", "import", f, check=2)
    assert f"{f}:5: services[0].colour: unknown field \"colour\"" in p.stderr, p.stderr
    f.write_text("services:\n  - name: x\n    type: shell-script\n    repository: r\n")
    p = gantry("db", "import", f, check=2)
    assert f"{f}:3: services[0].type: \"shell-script\" is not one of" in p.stderr, p.stderr
    f.write_text('{"services": [\n  {"name": "x",\n   "type": 3,,\n}]}\n')
    p = gantry("db", "import", f, check=2)
    assert f"{f}:3:15: invalid JSON" in p.stderr, p.stderr
    p = gantry("db", "import", tmp_path / "absent.yml", check=2)
    assert "absent.yml" in p.stderr


def test_hostile_files(gantry, tmp_path):
    cases = {
        "bomb.yml": "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
            f"{c}: &{c} [{', '.join(['*' + chr(ord(c) - 1)] * 10)}]\n" for c in "bcdefghij"),
        "tag.yml": 'services:\n  - !!python/object/apply:os.system ["touch /tmp/gantry-pwned"]\n',
        "deep.yml": "decorators:\n  - name: d\n    schema: " + "{a: " * 300 + "1" + "}" * 300 + "\n",
        "dup.yml": "repositories:\n  - {name: r, url: /a}\n  - {name: r, url: /b}\n",
    }
    want = {
        "bomb.yml": "more than 1000000 values, the limit for a service file",
        "tag.yml": "tag.yml:2: services[0]: tag tag:yaml.org,2002:python/object/apply:os.system is not accepted",
        "deep.yml": "nested more than 64 levels deep",
        "dup.yml": "dup.yml:3: repositories[1].name: \"r\" appears twice in repositories (also repositories[0], line 2)",
    }
    for name, text in cases.items():
        f = tmp_path / name
        f.write_text(text)
        p = gantry("db", "import", f, check=2, timeout=60)
        assert want[name] in p.stderr, (name, p.stderr)
    assert not os.path.exists("/tmp/gantry-pwned")
    f = tmp_path / "latin1.yml"
    f.write_bytes(b"services:\n  - name: caf\xe9\n")
    p = gantry("db", "import", f, check=2)
    assert "latin1.yml:2:" in p.stderr and "not valid text" in p.stderr, p.stderr
    f = tmp_path / "huge.yml"
    with open(f, "wb") as fh:
        fh.write(b"services: []\n" + b"#" * (17 << 20))
    p = gantry("db", "import", f, check=2)
    assert "larger than 16 MiB, the limit for a service file" in p.stderr, p.stderr
    assert gantry.json("get", "repositories")["items"] == []


def test_secret_values_never_accepted(gantry, tmp_path):
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n-----END OPENSSH PRIVATE KEY-----"
    f = tmp_path / "s.yml"
    f.write_text(f'repositories:\n  - name: r\n    url: /srv/r\n    private-key-name: "{key}"\n')
    p = gantry("db", "import", f, check=2)
    assert "s.yml:4: repositories[0].private-key-name: expected the name of a secret" in p.stderr
    assert "b3Blbn" not in p.stderr and "BEGIN" not in p.stderr
    f.write_text("secrets:\n  - name: token\n    value: hunter2-hunter2\n")
    p = gantry("db", "import", f, check=2)
    assert "secrets are not part of a service file" in p.stderr
    assert "hunter2" not in p.stderr


def test_permissions_are_the_apis(client, stack, examples_repo, tmp_path):
    """An operator reads (export) but does not write (import): the server's CRUD checks."""
    populate(client, examples_repo)
    out = tmp_path / "s.yml"
    client("db", "export", "--file", out, check=0)
    client("delete", "service", "hello", check=0)
    client("create", "user", "otto", "--role", "operator", "--password-stdin",
           input="otto-password\n", check=0)
    otto_dir = tmp_path / "otto"
    otto_dir.mkdir()
    otto = ClientGantry(otto_dir, stack, stack.controllers[0])
    otto("login", "otto", "--password-stdin", input="otto-password\n", check=0)
    assert otto("db", "export", check=0).stdout == client("db", "export", check=0).stdout
    p = otto("db", "import", out, check=2)
    assert "writing service \"hello\"" in p.stderr and "nothing was written" in p.stderr, p.stderr
    assert "hello" not in [s["name"] for s in client.json("get", "services")["items"]]


def test_etcd_backed_store(gantry, examples_repo, tmp_path):
    """Local mode on etcd ([store] backend = etcd), from and to a SQLite store."""
    hosts = os.environ.get("GANTRY_TEST_ETCD")
    if not hosts:
        pytest.skip("GANTRY_TEST_ETCD is not set (run under scripts/test-servers)")
    populate(gantry, examples_repo)
    out = tmp_path / "s.yml"
    gantry("db", "export", "--file", out, check=0)
    e = fresh_local(tmp_path, "etcd")
    e.config.write_text(textwrap.dedent(f"""\
        [application]
        mode = local
        working_dir = {e.work}
        cluster_id = db-{os.urandom(6).hex()}

        [store]
        backend = etcd
        etcd_hosts = {hosts}
        etcd_use_tls = false
        """))
    e("create", "secret", "token", input="t\n", check=0)
    e("create", "secret", "deploy-key", input="k\n", check=0)
    e("db", "import", out, check=0)
    assert resources(e) == resources(gantry)
    assert e("db", "export", check=0).stdout == out.read_text()
