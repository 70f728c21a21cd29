"""A run reaches only what its service grants: attacks an operator (role "read and run")
could try through inputs, repository contents and URLs, each against the real gantry
binary in local mode with real git, python3/pip and ansible-playbook."""
import json
import os
import sqlite3
import stat
import textwrap

from conftest import git


def make_repo(path, files, links=None):
    """A Git repository at path with files {name: text} (names ending in .sh are
    executable) and symlinks {name: target}, committed on main."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
        if name.endswith(".sh"):
            f.chmod(0o755)
    for name, target in (links or {}).items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, f)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "init")
    return path


PLAYBOOK = """\
    - hosts: localhost
      connection: local
      gather_facts: false
      tasks:
        - ansible.builtin.debug:
            msg: "name=[{{ name }}]"
        - ansible.builtin.debug:
            msg: "nested={{ nested | default({}) | to_json }}"
    """


def test_ansible_inputs_are_never_templated(gantry, tmp_path):
    markers = [tmp_path / f"marker{i}" for i in range(3)]
    repo = make_repo(tmp_path / "pb", {"site.yml": PLAYBOOK, "hosts": "localhost\n"})
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "service", "ansible-playbook", "pb", "--repository", "r",
           "--playbook", "site.yml", "--inventory", "hosts", check=0)
    evil = "{{ lookup('pipe','id; touch %s') }}" % markers[0]
    inputs = {
        "name": evil,
        # keys of nested objects and list items are data too
        "nested": {"k{{ lookup('pipe','touch %s') }}" % markers[1]:
                   ["{{ lookup('pipe','touch %s') }}" % markers[2], "a\nb: #c", 7]},
    }
    ex = gantry.json("run", "service", "pb", "--inputs", json.dumps(inputs))
    assert ex["state"] == "succeeded", ex
    for m in markers:
        assert not m.exists(), f"{m} was created: an input was templated"
    # the literal text reached the play, unevaluated
    assert f"name=[{evil}]" in ex["stdout"], ex["stdout"]
    assert "uid=" not in ex["stdout"]
    assert str(markers[1]) in ex["stdout"] and str(markers[2]) in ex["stdout"]
    # nothing of the inputs is left behind in the work directory
    assert not list(gantry.work.glob("runs/*/extra-vars.yml"))


def test_ansible_magic_variables_are_refused(gantry, tmp_path):
    repo = make_repo(tmp_path / "pb", {"site.yml": PLAYBOOK, "hosts": "localhost\n"})
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "service", "ansible-playbook", "pb", "--repository", "r",
           "--playbook", "site.yml", "--inventory", "hosts", check=0)
    for name in ("ansible_connection", "ansible_python_interpreter", "hostvars",
                 "become_user", "inventory_hostname", "environment", "omit"):
        p = gantry("run", "service", "pb", "--inputs", json.dumps({name: "x"}), check=2)
        assert f"$.inputs.{name}" in p.stderr and "Ansible" in p.stderr, p.stderr
    assert gantry.json("get", "executions")["items"] == []
    # an ordinary name runs
    assert gantry.json("run", "service", "pb", "--set", "name=ok")["state"] == "succeeded"


def test_input_names_and_values_never_become_options(gantry, tmp_path):
    repo = make_repo(tmp_path / "s", {
        "args.sh": '#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n',
        "args.py": "import sys\nprint(sys.argv[1:])\n",
    })
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "service", "executable", "e", "--repository", "r", "--filename", "args.sh",
           check=0)
    gantry("create", "service", "python-script", "py", "--repository", "r",
           "--filename", "args.py", check=0)
    for svc in ("e", "py"):
        for bad in ("-x", "--", "", "1a", "a b", "a=b"):
            p = gantry("run", "service", svc, "--inputs", json.dumps({bad: "1"}), check=2)
            assert f"$.inputs.{bad}" in p.stderr and "not a valid input name" in p.stderr, p.stderr
    # "--{key} {value}" makes the value an argument of its own: no leading '-'
    p = gantry("run", "service", "e", "--inputs", json.dumps({"a": "--help"}), check=2)
    assert "$.inputs.a" in p.stderr and "--{key}={value}" in p.stderr
    assert gantry.json("get", "executions")["items"] == []
    # a negative number after its option is that option's argument
    assert gantry.json("run", "service", "e", "--inputs", '{"n": -1}')["stdout"] == "[--n]\n[-1]\n"
    # joined forms keep any value inside one argument
    gantry("update", "service", "e", "--arg-format", "--{key}={value}", check=0)
    assert gantry.json("run", "service", "e", "--set", "a=--help")["stdout"] == "[--a=--help]\n"
    assert "['--a=-x']" in gantry.json("run", "service", "py", "--set", "a=-x")["stdout"]


GREETLIB_SETUP = 'from setuptools import setup\nsetup(name="greetlib", version="1.0.0", packages=["greetlib"])\n'


def test_symlinked_requirements_are_refused(gantry, tmp_path):
    secret = tmp_path / "secrets.key"
    secret.write_text("TOPSECRET-4711\n")
    # the same file reached by an absolute link and a relative one climbing out of the checkout
    hops = "../" * (len(secret.parent.relative_to("/").parts) + 8)
    variants = {
        "abs": {"requirements.txt": str(secret)},
        "rel": {"requirements.txt": hops + str(secret).lstrip("/")},
        # a local package directory whose files lead out of the checkout
        "pkg": {"greetlib/greetlib/data.txt": str(secret)},
    }
    for name, links in variants.items():
        files = {"main.py": "print('ran')\n", "greetlib/setup.py": GREETLIB_SETUP,
                 "greetlib/greetlib/__init__.py": "WHO = 'x'\n"}
        if name == "pkg":
            files["requirements.txt"] = "./greetlib\n"
        repo = make_repo(tmp_path / f"repo-{name}", files, links)
        gantry("create", "repository", name, "--url", repo, check=0)
        gantry("create", "service", "python-script", name, "--repository", name,
               "--filename", "main.py", check=0)
        ex = gantry.json("run", "service", name, check=1)
        assert ex["state"] == "failed", ex
        assert "outside the repository" in ex["error"], ex["error"]
        assert ("requirements file" in ex["error"]) == (name != "pkg"), ex["error"]
        text = json.dumps(ex)
        assert "TOPSECRET" not in text and str(secret) not in text, text
    # pip never ran: no venv was built from the secret
    assert not (gantry.work / "venvs").exists() or not [
        v for v in (gantry.work / "venvs").iterdir() if v.is_dir()]


def test_planted_hooks_and_configs_are_not_run(gantry, tmp_path):
    marker = tmp_path / "hook-ran"
    hook = f"#!/bin/sh\necho planted >> {marker}\n"
    a = make_repo(tmp_path / "a", {"ok.sh": "#!/bin/sh\necho a\n"})
    b = make_repo(tmp_path / "b", {"ok.sh": "#!/bin/sh\necho b\n"})
    for n, repo in (("a", a), ("b", b)):
        gantry("create", "repository", n, "--url", repo, check=0)
        gantry("create", "service", "executable", n, "--repository", n, "--filename", "ok.sh",
               check=0)
        assert gantry.json("run", "service", n)["stdout"] == f"{n}\n"
    # a run of b writes hooks into every cache (what a run could do without a sandbox),
    # and a hooks directory of its own that a planted config points at
    planted = tmp_path / "planted-hooks"
    planted.mkdir()
    caches = list((gantry.work / "repos").glob("*.git"))
    assert len(caches) == 2
    for d in [planted] + [c / "hooks" for c in caches]:
        d.mkdir(exist_ok=True)
        for name in ("reference-transaction", "post-checkout", "pre-auto-gc", "post-index-change"):
            (d / name).write_text(hook)
            (d / name).chmod(0o755)
    for c in caches:
        with open(c / "config", "a") as f:
            f.write(f"[core]\n\thooksPath = {planted}\n\tfsmonitor = {planted}/post-checkout\n")
    # and a user's global git config that names hooks too
    (tmp_path / ".gitconfig").write_text(f"[core]\n\thooksPath = {planted}\n")
    # the next fetches (new commits, so refs change) must run none of them
    for n, repo in (("a", a), ("b", b)):
        (repo / "ok.sh").write_text(f"#!/bin/sh\necho {n}2\n")
        git(repo, "commit", "-qam", "two")
        ex = gantry.json("run", "service", n)
        assert ex["stdout"] == f"{n}2\n", ex
    assert not marker.exists(), marker.read_text()


def test_remote_helper_urls_are_refused(gantry, tmp_path):
    marker = tmp_path / "marker"
    for url in (f"ext::sh -c touch% {marker}", "fd::3", "fd::3,4", "a::b", "git+x::y",
                "testgit::/srv/r"):
        p = gantry("create", "repository", "r", "--url", url, check=2)
        assert "$.url" in p.stderr and "remote helper" in p.stderr, p.stderr
    assert gantry.json("get", "repositories")["items"] == []
    # an update cannot bring one in either
    repo = make_repo(tmp_path / "ok", {"ok.sh": "#!/bin/sh\necho ok\n"})
    gantry("create", "repository", "r", "--url", repo, check=0)
    p = gantry("update", "repository", "r", "--url", f"ext::sh -c touch% {marker}", check=2)
    assert "$.url" in p.stderr
    # one stored before the check is refused when it runs
    gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "ok.sh",
           check=0)
    set_stored_url(gantry, "r", f"ext::sh -c touch% {marker}")
    ex = gantry.json("run", "service", "s", check=1)
    assert ex["state"] == "failed" and "remote helper" in ex["error"], ex
    assert not marker.exists()


def set_stored_url(gantry, name, url):
    """Changes a stored repository's URL behind the API (as stored by an older version)."""
    db = sqlite3.connect(gantry.work / "gantry.db")
    (body,) = db.execute("SELECT body FROM documents WHERE coll='repositories' AND id=?",
                         (name,)).fetchone()
    doc = json.loads(body)
    doc["url"] = url
    db.execute("UPDATE documents SET body=? WHERE coll='repositories' AND id=?",
               (json.dumps(doc), name))
    db.commit()
    db.close()


def test_credentials_in_urls(gantry, tmp_path):
    p = gantry("create", "repository", "r", "--url", "https://bob:hunter22@127.0.0.1:1/r.git",
               check=2)
    assert "$.url" in p.stderr and "secret" in p.stderr and "hunter22" not in p.stderr, p.stderr
    # one stored before: shown masked, and never in a run's error
    repo = make_repo(tmp_path / "ok", {"ok.sh": "#!/bin/sh\necho ok\n"})
    gantry("create", "repository", "r", "--url", repo, check=0)
    gantry("create", "service", "executable", "s", "--repository", "r", "--filename", "ok.sh",
           check=0)
    set_stored_url(gantry, "r", "https://bob:hunter22@127.0.0.1:1/r.git")
    shown = gantry("get", "repositories", "-o", "json", check=0).stdout
    assert "hunter22" not in shown and "bob:***@127.0.0.1" in shown, shown
    d = gantry("describe", "repository", "r", check=0).stdout
    assert "hunter22" not in d
    ex = gantry.json("run", "service", "s", check=1)
    assert ex["state"] == "failed" and "hunter22" not in json.dumps(ex), ex
    assert "bob:***@" in ex["error"], ex["error"]
    # plain http is off unless the runner allows it
    set_stored_url(gantry, "r", "http://127.0.0.1:1/r.git")
    ex = gantry.json("run", "service", "s", check=1)
    assert "allow_http_repositories" in ex["error"], ex["error"]


def write_greetlib(repo, who):
    (repo / "greetlib/greetlib").mkdir(parents=True, exist_ok=True)
    (repo / "greetlib/setup.py").write_text(GREETLIB_SETUP)
    (repo / "greetlib/greetlib/__init__.py").write_text(f"WHO = {who!r}\n")


def test_venvs_are_keyed_on_repository_and_package_contents(gantry, tmp_path):
    # a umask that would leave group-writable files: Gantry must take that away
    old = os.umask(0o002)
    try:
        venvs_checked(gantry, tmp_path)
    finally:
        os.umask(old)


def venvs_checked(gantry, tmp_path):
    main = "import greetlib\nprint('who=' + greetlib.WHO)\n"
    for who in ("alice", "mallory"):
        repo = make_repo(tmp_path / who, {"main.py": main, "requirements.txt": "./greetlib\n"})
        write_greetlib(repo, who)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "greetlib")
        gantry("create", "repository", who, "--url", repo, check=0)
        gantry("create", "service", "python-script", who, "--repository", who,
               "--filename", "main.py", check=0)
    # same requirements.txt text, different ./greetlib: each run gets its own package
    assert gantry.json("run", "service", "mallory")["stdout"] == "who=mallory\n"
    assert gantry.json("run", "service", "alice")["stdout"] == "who=alice\n"
    venvs = sorted(v.name for v in (gantry.work / "venvs").iterdir() if v.is_dir())
    assert len(venvs) == 2, venvs
    # a change inside the package directory is a new venv too
    write_greetlib(tmp_path / "alice", "alice2")
    git(tmp_path / "alice", "commit", "-qam", "v2")
    assert gantry.json("run", "service", "alice")["stdout"] == "who=alice2\n"
    assert len([v for v in (gantry.work / "venvs").iterdir() if v.is_dir()]) == 3
    # and nothing in a venv is writable by group or others
    for v in (gantry.work / "venvs").iterdir():
        for dirpath, dirs, files in os.walk(v):
            for n in dirs + files + ["."]:
                st = os.lstat(os.path.join(dirpath, n))
                if not stat.S_ISLNK(st.st_mode):
                    assert not st.st_mode & 0o022, os.path.join(dirpath, n)
