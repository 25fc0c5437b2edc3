"""Validates rendered Kubernetes manifests offline, without a cluster.

Built-in kinds go to kubernetes-validate (PyPI; it ships the Kubernetes OpenAPI schemas) in strict mode, so an
unknown or misplaced field fails. A KEDA ScaledObject goes to the JSON schema of cloudcoil-models-keda (PyPI;
pydantic models generated from KEDA's CRDs), made strict here the same way (no property the CRD does not
declare), and its nats-jetstream triggers are checked against the parameters KEDA documents for that scaler.

    python tests/kubernetes/validate.py KUBERNETES_VERSION FILE...
"""

import sys

import jsonschema
import kubernetes_validate
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

# https://keda.sh/docs/latest/scalers/nats-jetstream/ (trigger metadata; every value is a string).
NATS_JETSTREAM = {
    "required": {"natsServerMonitoringEndpoint", "stream", "consumer", "lagThreshold"},
    "optional": {"account", "activationLagThreshold", "useHttps"},
}


def strict(schema):
    """Every object that lists its properties admits no other (the CRD's structural schema prunes them)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


SCALED_OBJECT = strict(ScaledObject.model_json_schema(by_alias=True, mode="validation"))


def scaled_object_problems(doc):
    validator = jsonschema.Draft202012Validator(SCALED_OBJECT)
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]
    for index, trigger in enumerate(doc.get("spec", {}).get("triggers", [])):
        if trigger.get("type") != "nats-jetstream":
            continue
        metadata = trigger.get("metadata", {})
        where = f"spec.triggers.{index}.metadata"
        for key in sorted(NATS_JETSTREAM["required"] - metadata.keys()):
            problems.append(f"{where}: missing {key}")
        for key in sorted(metadata.keys() - NATS_JETSTREAM["required"] - NATS_JETSTREAM["optional"]):
            problems.append(f"{where}: {key} is not a nats-jetstream parameter")
        for key, value in metadata.items():
            if not isinstance(value, str):
                problems.append(f"{where}.{key}: {value!r} is not a string")
    return problems


def main():
    version, files = sys.argv[1], sys.argv[2:]
    failures = checked = 0
    for path in files:
        with open(path, encoding="utf-8") as handle:
            docs = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
        for doc in docs:
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            checked += 1
            if doc.get("apiVersion", "").startswith("keda.sh/"):
                if doc.get("kind") != "ScaledObject":
                    problems = [f"no schema here for {doc.get('apiVersion')} {doc.get('kind')}"]
                else:
                    problems = scaled_object_problems(doc)
            else:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    problems = []
                except kubernetes_validate.ValidationError as error:
                    path_text = ".".join(str(p) for p in error.path) or "(root)"
                    problems = [f"{path_text}: {error.message}"]
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
                    problems = [f"no Kubernetes {version} schema for {doc.get('apiVersion')} {doc.get('kind')}: {error!r}"]
            for problem in problems:
                print(f"INVALID {name}: {problem}")
            failures += bool(problems)
    print(f"{checked - failures} passed, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
