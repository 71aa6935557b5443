"""The IAM policies under cluster/iam/ against what Ray really calls, and the script that makes the roles.

Ray's AWS node provider is read from the installed Ray (ast): every EC2 API it reaches from the code the
head's autoscaler runs must be allowed by cluster/iam/head-policy.json, and the policy allows no EC2 action
it does not call. boto3 names an EC2 call three ways, all mapped to the IAM action (`ec2:<Operation>`) with
boto3's own models: a client method (`client.create_tags` -> CreateTags), a resource action or collection
(`ec2.create_instances` -> RunInstances, `ec2.instances.filter` -> DescribeInstances), and an Instance's
action, waiter or load (`node.terminate()` -> TerminateInstances, `node.wait_until_stopped()` ->
DescribeInstances). A Ray upgrade that adds a call fails here, not on the cluster.

What runs where: the head's autoscaler (monitor.py) builds `AWSNodeProvider` and calls its node methods.
`ray up` on the laptop also runs `bootstrap_config` (-> aws/config.py: key pairs, security groups, subnets,
IAM roles) and `fillout_available_node_types_resources` (-> `list_ec2_instances`, DescribeInstanceTypes);
those calls use the laptop's credentials, so they are not in the head policy, and a test checks that only
`ray up` (autoscaler/_private/commands.py) reaches them; on the head, only the monitor's clean-up after a
crash with RAY_AUTOSCALER_FATESHARE_WORKERS=1 (not set by our YAMLs) would run that bootstrap. `_check_ami_cwa_installation` runs only with
`provider.cloudwatch`, which the offline check refuses together with objmae-ray-head.
"""
from __future__ import annotations

import ast
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from s3_helpers import moto_server

from objmae_ray.sweep.cluster import HEAD_PROFILE, WORKER_PROFILE, load_cluster_config

ray = pytest.importorskip("ray")
boto3 = pytest.importorskip("boto3")

REPO = Path(__file__).resolve().parents[1]
IAM = REPO / "cluster" / "iam"
RAY = Path(ray.__file__).parent
AWS = RAY / "autoscaler" / "_private" / "aws"
HEAD_SIDE_FILES = ("node_provider.py", "utils.py")
# node_provider.py functions that run only on the laptop during `ray up` (their callers are checked below)
LAPTOP_ONLY = {"bootstrap_config", "fillout_available_node_types_resources", "list_ec2_instances"}
CLOUDWATCH_ONLY = {"_check_ami_cwa_installation"}  # only with provider.cloudwatch
CLIENT_FACTORIES = {"client_cache", "resource_cache", "_client", "_resource", "client", "resource"}


def policy(name: str) -> dict:
    return json.loads((IAM / name).read_text())


# ---- boto3's EC2 model: method names -> API operations --------------------------------------------------------
def ec2_names() -> tuple[dict[str, str], set[str]]:
    """({method or attribute name: EC2 operation}, other EC2 resource types boto3 has, which we do not map)."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    names = {xform_name(op): op for op in session.get_service_model("ec2").operation_names}  # client methods
    resources = json.loads(sorted(Path(boto3.__file__).parent.glob("data/ec2/*/resources-1.json"))[-1].read_text())
    service = resources["service"]
    names.update({xform_name(n): a["request"]["operation"] for n, a in service["actions"].items()})
    names.update({xform_name(n): c["request"]["operation"] for n, c in service["hasMany"].items()})
    instance = resources["resources"]["Instance"]
    names.update({xform_name(n): a["request"]["operation"]
                  for n, a in {**instance["actions"], **instance["batchActions"]}.items()})
    waiters = session.get_waiter_model("ec2")
    names.update({f"wait_until_{xform_name(n)}": waiters.get_waiter(w["waiterName"]).operation
                  for n, w in instance["waiters"].items()})
    names["load"] = names["reload"] = instance["load"]["request"]["operation"]
    return names, set(resources["resources"]) - {"Instance"}


def _functions(tree: ast.Module):
    """Top-level functions and class methods, with their names."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield item.name, item


def aws_calls(source: str, skip: set[str] = frozenset()) -> tuple[dict[str, set[str]], list[str]]:
    """({IAM action: {functions reaching it}}, problems the map cannot judge) for one module's source:
    clients of another service, or an EC2 resource type other than Instance."""
    names, other_resources = ec2_names()
    actions: dict[str, set[str]] = defaultdict(set)
    unjudged = []
    for func_name, func in _functions(ast.parse(source)):
        if func_name in skip:
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Attribute) and node.attr in names:
                actions[f"ec2:{names[node.attr]}"].add(func_name)
            if not isinstance(node, ast.Call):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in other_resources:
                unjudged.append(f"{func_name}: EC2 resource {called}")
            if called in CLIENT_FACTORIES and node.args and isinstance(node.args[0], ast.Constant) \
                    and node.args[0].value != "ec2":
                unjudged.append(f"{func_name}: a {node.args[0].value!r} client")
    return actions, unjudged


def head_calls() -> tuple[dict[str, set[str]], list[str]]:
    actions: dict[str, set[str]] = defaultdict(set)
    unjudged = []
    for name in HEAD_SIDE_FILES:
        found, problems = aws_calls((AWS / name).read_text(), skip=LAPTOP_ONLY | CLOUDWATCH_ONLY)
        for action, funcs in found.items():
            actions[action] |= {f"{name}:{f}" for f in funcs}
        unjudged += [f"{name}: {p}" for p in problems]
    return actions, unjudged


def allows(document: dict, action: str) -> bool:
    return any(s["Effect"] == "Allow" and any(fnmatch.fnmatch(action.lower(), a.lower()) for a in _list(s["Action"]))
               for s in document["Statement"])


def _list(value) -> list:
    return value if isinstance(value, list) else [value]


# ---- the head policy against Ray's code -------------------------------------------------------------------------
def test_head_policy_allows_exactly_the_ec2_calls_of_rays_node_provider_on_the_head():
    actions, unjudged = head_calls()
    assert unjudged == [], "calls the action map cannot judge; extend it and the policy"
    # what Ray 2.60 calls (the scan must find them, or it would pass on nothing)
    assert {"ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:TerminateInstances"} <= set(actions)
    assert actions["ec2:RunInstances"] == {"node_provider.py:_create_node"}  # ec2_fail_fast.create_instances
    head = policy("head-policy.json")
    missing = {a: sorted(f) for a, f in actions.items() if not allows(head, a)}
    assert missing == {}, f"Ray's AWS node provider calls EC2 actions cluster/iam/head-policy.json lacks: {missing}"
    granted = {a for s in head["Statement"] for a in _list(s["Action"]) if a.startswith("ec2:")}
    assert granted == set(actions), "the head policy grants EC2 actions Ray does not call"


def test_an_added_ec2_call_is_found_and_fails_the_policy():
    """What a Ray upgrade that adds a call looks like to the test: new names in the provider's source."""
    source = (AWS / "node_provider.py").read_text() + '''

class Upgraded:
    def set_node_name(self, node_id):
        self.ec2.meta.client.modify_instance_attribute(InstanceId=node_id)
        self.ec2.Instance(node_id).wait_until_running()
        for volume in self.ec2.volumes.all():
            pass
        self.ec2.Volume("vol-1").delete()
'''
    actions, unjudged = aws_calls(source, skip=LAPTOP_ONLY | CLOUDWATCH_ONLY)
    assert actions["ec2:ModifyInstanceAttribute"] == {"set_node_name"}
    assert "set_node_name" in actions["ec2:DescribeInstances"] and actions["ec2:DescribeVolumes"] == {"set_node_name"}
    assert unjudged == ["set_node_name: EC2 resource Volume"]
    head = policy("head-policy.json")
    assert not allows(head, "ec2:ModifyInstanceAttribute") and not allows(head, "ec2:DescribeVolumes")


def test_laptop_only_calls_are_reached_only_from_ray_up():
    """bootstrap_config / fillout_available_node_types_resources / list_ec2_instances (their EC2 and IAM calls
    are left out of the head policy) are called only by `ray up`'s commands.py and by each other, and the
    CloudWatch check only under `provider.cloudwatch`."""
    callers = defaultdict(set)
    for path in RAY.rglob("*.py"):
        if "tests" in path.parts:
            continue
        try:
            text = path.read_text()
            if not any(name in text for name in LAPTOP_ONLY | CLOUDWATCH_ONLY):
                continue
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError):
            continue
        for func_name, func in [("<module>", tree), *_functions(tree)]:
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    if called in LAPTOP_ONLY | CLOUDWATCH_ONLY:
                        callers[called].add(f"{path.relative_to(RAY)}:{func_name}")
    # "<module>" walks the whole file, so every caller is listed once under it too; keep the functions
    for called in callers:
        callers[called] = {c for c in callers[called] if not c.endswith(":<module>")}
    commands = "autoscaler/_private/commands.py:_bootstrap_config"
    provider = "autoscaler/_private/aws/node_provider.py"
    assert callers["bootstrap_config"] == {commands}
    assert callers["fillout_available_node_types_resources"] == {commands}
    assert callers["list_ec2_instances"] == {f"{provider}:fillout_available_node_types_resources"}
    assert callers["_check_ami_cwa_installation"] == {f"{provider}:_create_node"}
    lines = (AWS / "node_provider.py").read_text().splitlines()
    call = next(i for i, line in enumerate(lines) if "self._check_ami_cwa_installation(" in line)
    assert "cloudwatch_config_exists" in lines[call - 1]
    # The head's monitor reaches `ray up`'s bootstrap only through teardown_cluster, after a crash and only
    # with RAY_AUTOSCALER_FATESHARE_WORKERS=1 (the YAMLs do not set it)
    monitor = (RAY / "autoscaler" / "_private" / "monitor.py").read_text()
    assert "import teardown_cluster" in monitor and "_bootstrap_config" not in monitor
    lines = monitor.splitlines()
    teardowns = [i for i, line in enumerate(lines) if "teardown_cluster(" in line]
    destroys = [i for i, line in enumerate(lines) if "self.destroy_autoscaler_workers()" in line]
    assert len(teardowns) == 1 and "def destroy_autoscaler_workers" in "\n".join(lines[teardowns[0] - 20:teardowns[0]])
    assert destroys and all("RAY_AUTOSCALER_FATESHARE_WORKERS" in "\n".join(lines[i - 5:i]) for i in destroys)


# ---- policy documents -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["head-policy.json", "worker-policy.json", "trust-policy.json"])
def test_policies_have_the_iam_json_shape(name):
    document = policy(name)
    assert set(document) == {"Version", "Statement"} and document["Version"] == "2012-10-17"
    assert isinstance(document["Statement"], list) and document["Statement"]
    for statement in document["Statement"]:
        assert statement["Effect"] in ("Allow", "Deny")
        actions = _list(statement["Action"])
        assert actions and all(isinstance(a, str) and a.count(":") == 1 for a in actions)
        target = "Principal" if name == "trust-policy.json" else "Resource"
        assert target in statement and ("Resource" in statement) != (name == "trust-policy.json")
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Principal", "Condition"}


def test_workers_get_the_bucket_only_and_the_head_passes_only_the_workers_role():
    worker, head = policy("worker-policy.json"), policy("head-policy.json")
    for statement in worker["Statement"]:
        assert all(a.startswith("s3:") for a in _list(statement["Action"]))
        assert all(r.startswith("arn:aws:s3:::YOUR-BUCKET") for r in _list(statement["Resource"]))
    bucket_statements = [s for s in head["Statement"] if any(a.startswith("s3:") for a in _list(s["Action"]))]
    assert bucket_statements == worker["Statement"]  # the same bucket rights, nothing more
    iam = [s for s in head["Statement"] if any(a.startswith("iam:") for a in _list(s["Action"]))]
    assert [_list(s["Action"]) for s in iam] == [["iam:PassRole"]]
    assert _list(iam[0]["Resource"]) == [f"arn:aws:iam::*:role/{WORKER_PROFILE}"]
    assert iam[0]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert not any("*" in a for s in head["Statement"] for a in _list(s["Action"]))


def test_gpu_yaml_names_the_head_and_worker_profiles_the_script_makes():
    config = load_cluster_config(REPO / "cluster" / "gpu.yaml")
    types = config["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    assert profiles == {"head": HEAD_PROFILE, "gpu_1x": WORKER_PROFILE, "gpu_8x": WORKER_PROFILE}
    script = (IAM / "create_roles.sh").read_text()
    assert 'for who in head worker' in script and 'name="objmae-ray-$who"' in script
    assert (HEAD_PROFILE, WORKER_PROFILE) == ("objmae-ray-head", "objmae-ray-worker")


# ---- cluster/iam/create_roles.sh against a local IAM (moto) -----------------------------------------------------
def test_create_roles_script_makes_roles_profiles_and_policies_idempotently(tmp_path):
    bin_dir = Path(sys.executable).parent
    if shutil.which("aws", path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}") is None:
        pytest.skip("awscli not installed (test extra)")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    script = ["bash", str(IAM / "create_roles.sh")]
    with moto_server() as aws:
        env.update(aws)
        for _ in range(2):  # a rerun changes nothing and succeeds
            run = subprocess.run([*script, "my-objmae-bucket"], env=env, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == [
            "instance profile objmae-ray-head: role objmae-ray-head, policy head-policy.json (bucket my-objmae-bucket)",
            "instance profile objmae-ray-worker: role objmae-ray-worker, policy worker-policy.json (bucket my-objmae-bucket)",
            "spot service-linked role: AWSServiceRoleForEC2Spot"]
        iam = boto3.client("iam", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        for who, name in (("head", HEAD_PROFILE), ("worker", WORKER_PROFILE)):
            roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
            assert [r["RoleName"] for r in roles] == [name]
            trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
            assert trust == policy("trust-policy.json")
            assert iam.list_role_policies(RoleName=name)["PolicyNames"] == [name]
            inline = iam.get_role_policy(RoleName=name, PolicyName=name)["PolicyDocument"]
            assert inline == json.loads((IAM / f"{who}-policy.json").read_text().replace("YOUR-BUCKET", "my-objmae-bucket"))
        spot = [r for r in iam.list_roles()["Roles"] if r["Path"].startswith("/aws-service-role/spot")]
        assert len(spot) == 1  # moto names it AWSServiceRoleForspot; AWS, AWSServiceRoleForEC2Spot

    bad = subprocess.run([*script, "s3://my-objmae-bucket"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "usage: bash cluster/iam/create_roles.sh BUCKET" in bad.stderr

