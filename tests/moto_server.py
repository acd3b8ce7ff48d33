"""A real S3 + STS + IAM server for skiff's tests: moto in server mode on 127.0.0.1:PORT.

It creates what a user would have set up in their object store before giving skiff a task
role, then turns request authentication on and prints one JSON line with the names and keys
the test needs:

- user `skiff-controller` (keys handed to skiff as secrets) may call sts:AssumeRole;
- role `skiff-tasks` trusts that user and may do anything in bucket `photos`: skiff's session
  policy is what narrows the credentials each task gets;
- bucket `photos` with incoming/a.txt, private/b.txt and reports/r.txt;
- user `static-reader` (for the static-keys provider) may read photos/reports/* only;
- user `uploader` may do anything in `photos` (the tests' own uploads, and bucket watchers).

moto 5 evaluates only the assumed role's own policies and ignores the session policy passed to
AssumeRole; AWS allows an action only if both permit it. The patch below adds that rule, so the
test checks the policy skiff sends rather than moto's role.
"""

import json
import signal
import sys

import boto3
from moto import settings
from moto.iam import access_control as ac
from moto.server import ThreadedMotoServer
from moto.sts.models import sts_backends

_own_policies_only = ac.IAMRequestBase.check_action_permitted


def _with_session_policy(self, resource):
    _own_policies_only(self, resource)
    key = self._access_key
    if not isinstance(key, ac.AssumedRoleAccessKey):
        return
    for assumed in sts_backends[key.account_id][key.partition].assumed_roles:
        if assumed.access_key_id == key._access_key_id and assumed.policy:
            verdict = ac.IAMPolicy(assumed.policy).is_action_permitted(self._action, resource)
            if verdict != ac.PermissionResult.PERMITTED:
                self._raise_access_denied()


ac.IAMRequestBase.check_action_permitted = _with_session_policy


def main():
    port = int(sys.argv[1])
    # Optional: the address to listen on (default loopback), for tests whose tasks reach it
    # from their own network namespace through skiff's bridge.
    listen = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    server = ThreadedMotoServer(ip_address=listen, port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    setup = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam = boto3.client("iam", **setup)
    s3 = boto3.client("s3", **setup)

    def policy(*statements):
        return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})

    user = iam.create_user(UserName="skiff-controller")["User"]
    controller_key = iam.create_access_key(UserName="skiff-controller")["AccessKey"]
    iam.put_user_policy(
        UserName="skiff-controller",
        PolicyName="assume",
        PolicyDocument=policy({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}),
    )
    role = iam.create_role(
        RoleName="skiff-tasks",
        AssumeRolePolicyDocument=policy(
            {"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}
        ),
    )["Role"]
    iam.put_role_policy(
        RoleName="skiff-tasks",
        PolicyName="all-photos",
        PolicyDocument=policy(
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": ["arn:aws:s3:::photos", "arn:aws:s3:::photos/*"],
            }
        ),
    )
    iam.create_user(UserName="static-reader")
    static_key = iam.create_access_key(UserName="static-reader")["AccessKey"]
    iam.put_user_policy(
        UserName="static-reader",
        PolicyName="reports",
        PolicyDocument=policy(
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::photos/reports/*"}
        ),
    )
    iam.create_user(UserName="uploader")
    uploader_key = iam.create_access_key(UserName="uploader")["AccessKey"]
    iam.put_user_policy(
        UserName="uploader",
        PolicyName="photos",
        PolicyDocument=policy(
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": ["arn:aws:s3:::photos", "arn:aws:s3:::photos/*"],
            }
        ),
    )
    s3.create_bucket(Bucket="photos")
    s3.put_object(Bucket="photos", Key="incoming/a.txt", Body=b"hello from incoming")
    s3.put_object(Bucket="photos", Key="private/b.txt", Body=b"private")
    s3.put_object(Bucket="photos", Key="reports/r.txt", Body=b"quarterly report")

    # From here every request must be signed by a known key and allowed by its policies.
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    print(
        json.dumps(
            {
                "endpoint": endpoint,
                "role_arn": role["Arn"],
                "controller_key_id": controller_key["AccessKeyId"],
                "controller_secret": controller_key["SecretAccessKey"],
                "static_key_id": static_key["AccessKeyId"],
                "static_secret": static_key["SecretAccessKey"],
                "uploader_key_id": uploader_key["AccessKeyId"],
                "uploader_secret": uploader_key["SecretAccessKey"],
            }
        ),
        flush=True,
    )
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()


if __name__ == "__main__":
    main()
