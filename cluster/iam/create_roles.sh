#!/usr/bin/env bash
# Creates the two IAM roles and instance profiles cluster/gpu.yaml names (once per AWS account; idempotent):
#   objmae-ray-head   (head-policy.json): the EC2 calls Ray's autoscaler makes on the head, iam:PassRole
#                     on objmae-ray-worker only, and the storage bucket;
#   objmae-ray-worker (worker-policy.json): the storage bucket only.
# Both roles trust ec2.amazonaws.com (trust-policy.json). Also makes sure the EC2 Spot service-linked role
# exists (a RunInstances call for spot capacity needs it; the console makes it, the API does not).
#   usage: bash cluster/iam/create_roles.sh BUCKET     (the bucket of --storage s3://BUCKET/... and the data)
# Needs the AWS CLI and credentials allowed to manage IAM (an administrator, once). AWS_ENDPOINT_URL is
# honoured (the tests run it against a local moto server).
set -euo pipefail
BUCKET="${1:-}"
if [ -z "$BUCKET" ] || [ "$#" -ne 1 ] || [[ "$BUCKET" == s3://* ]]; then
  echo "usage: bash cluster/iam/create_roles.sh BUCKET  (a bucket name, e.g. my-objmae-bucket, not s3://...)" >&2
  exit 2
fi
command -v aws >/dev/null || { echo "create_roles.sh: the AWS CLI (aws) is not installed: pip install awscli" >&2; exit 2; }
cd "$(dirname "$0")"

for who in head worker; do
  name="objmae-ray-$who"
  if ! aws iam get-role --role-name "$name" >/dev/null 2>&1; then
    aws iam create-role --role-name "$name" --assume-role-policy-document file://trust-policy.json >/dev/null
  fi
  # put-role-policy replaces the inline policy: a rerun after a bucket change updates it
  aws iam put-role-policy --role-name "$name" --policy-name "$name" \
    --policy-document "$(sed "s/YOUR-BUCKET/$BUCKET/g" "$who-policy.json")"
  if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
  fi
  roles=$(aws iam get-instance-profile --instance-profile-name "$name" \
            --query 'InstanceProfile.Roles[].RoleName' --output text)
  if ! grep -qw "$name" <<<"$roles"; then
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
  fi
  echo "instance profile $name: role $name, policy $who-policy.json (bucket $BUCKET)"
done

if ! aws iam get-role --role-name AWSServiceRoleForEC2Spot >/dev/null 2>&1; then
  if ! out=$(aws iam create-service-linked-role --aws-service-name spot.amazonaws.com 2>&1 >/dev/null); then
    grep -qiE 'taken|already exists' <<<"$out" || { echo "create_roles.sh: $out" >&2; exit 1; }
  fi
fi
echo "spot service-linked role: AWSServiceRoleForEC2Spot"
