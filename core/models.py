"""The model registry: one module for every use of MLflow's Model Registry.

Training registers versions with their tags, the eval gate records figures and moves the
`staff` alias, `lathe promote` moves `production`, packaging and deploy resolve an alias
to a version, and any tool fetches a version by ``models:/`` URI. Aliases are the rollout
tracks (MLflow stages are deprecated). Lineage tags (``lathe.*``) trace a version back to
what made it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lathe.core.errors import InputError, LatheError
from lathe.core.tracking import figure_name, mlflow_key

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MODEL_NAME = "lathe-code"  # the registered model, and the Triton model that serves it
STAFF, PRODUCTION = "staff", "production"  # rollout tracks: internal users first, then everyone
# Smaller, faster variants served beside the full model: each is gated on its own and holds `<track>-<variant>`.
VARIANTS = ("int8", "distill")
FIGURE_PREFIX = "eval."  # version tags holding the gate's figures (eval.pass_at_1, eval.val_loss)
# Lineage tags on every version (a contract other tools read): what it was made from.
LINEAGE_TAGS = (
    "lathe.profile",
    "lathe.fingerprint",
    "lathe.parent_version",
    "lathe.data_snapshot",
    "lathe.tokenizer",
    "lathe.shards",
    "lathe.method",
    "lathe.tokens",
    "lathe.val_loss",
)


def _client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient()  # the tracking URI lathe set (lathe.core.tracking.setup_tracking)


def verify_registered(manifest: dict[str, Any], inputs: Mapping[str, Any]) -> str | None:
    """A stage's ``verify`` hook for every stage that registers a version: a finished run still counts only
    while the version its manifest names (``details.registered_model`` / ``details.model_version``) exists.

    ``inputs`` (the upstream stages) is the hook's signature; the registry alone decides.
    """
    details = manifest.get("details") or {}
    name, version = details.get("registered_model"), details.get("model_version")
    if name and version and not ModelRegistry(name).exists(str(version)):
        return f"version {version} of {name} it registered is gone from the model registry"
    return None


class ModelRegistry:
    """The versions, tags and aliases of one registered model."""

    def __init__(self, name: str = MODEL_NAME, client: MlflowClient | None = None) -> None:
        self.name = name
        self.client = client or _client()

    def register(self, model_dir: Path, run_id: str, tags: dict[str, str]) -> str:
        """Log the HF directory to run ``run_id`` (the active run) and register it as a new version."""
        import mlflow

        mlflow.log_artifacts(str(model_dir), artifact_path="hf_model")
        try:
            self.client.get_registered_model(self.name)
        except mlflow.exceptions.MlflowException:
            self.client.create_registered_model(self.name, description="lathe code-completion model (HF Llama checkpoint)")
        source = f"{mlflow.get_run(run_id).info.artifact_uri}/hf_model"
        return str(self.client.create_model_version(self.name, source=source, run_id=run_id, tags=tags).version)

    def find(self, alias: str) -> str | None:
        """The version holding ``alias``, or None when no version does (or no model exists yet).

        An alias that points at a version that does not exist is an error, never "none": a gate
        must not compare a candidate with nothing because production's entry was lost.
        """
        version = self.aliases().get(alias)
        if version is None:
            return None
        if not self.exists(version):
            raise LatheError(
                f"the `{alias}` alias of {self.name} points at version {version}, which does not exist; "
                f"point it at a registered version (`lathe promote` for `{PRODUCTION}`) or delete the alias"
            )
        return version

    def dangling(self) -> dict[str, str]:
        """Aliases that point at versions that do not exist (alias -> version)."""
        return {alias: version for alias, version in self.aliases().items() if not self.exists(version)}

    def version_of(self, alias: str) -> str:
        """The version holding ``alias``; one clear line when none does."""
        version = self.find(alias)
        if version is None:
            raise LatheError(
                f"no version of {self.name} holds the `{alias}` alias; the gate sets `{STAFF}` "
                f"(`lathe run eval`), `lathe promote` sets `{PRODUCTION}`"
            )
        return version

    def exists(self, version: str) -> bool:
        """Whether ``version`` of this model is registered (the store may have been lost or pruned)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.name, version)
        except MlflowException:
            return False
        return True

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""
        self.client.set_registered_model_alias(self.name, alias, version)

    def aliases(self) -> dict[str, str]:
        """Every alias and the version it holds (empty when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return {a: str(v) for a, v in self.client.get_registered_model(self.name).aliases.items()}
        except MlflowException:
            return {}

    def promote(self, source: str = STAFF, target: str = PRODUCTION) -> str:
        """Move ``target`` to the version holding ``source``, and each variant's ``<target>-<variant>`` to the
        version holding ``<source>-<variant>`` where one does; return the main version."""
        version = self.version_of(source)
        self.set_alias(target, version)
        for variant in VARIANTS:
            if (held := self.find(variant_alias(source, variant))) is not None:
                self.set_alias(variant_alias(target, variant), held)
        return version

    def tags(self, version: str) -> dict[str, str]:
        """The version's tags."""
        return dict(self.client.get_model_version(self.name, version).tags)

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        """Set (or overwrite) tags on a version."""
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def record_figures(self, version: str, figures: dict[str, float]) -> None:
        """Keep evaluation figures (pass@1, val_loss) on the version, for later gates to compare against."""
        self.set_tags(version, {FIGURE_PREFIX + mlflow_key(k): str(v) for k, v in figures.items()})

    def figures(self, version: str) -> dict[str, float]:
        """The figures :meth:`record_figures` kept on the version."""
        return {
            figure_name(k.removeprefix(FIGURE_PREFIX)): float(v)
            for k, v in self.tags(version).items()
            if k.startswith(FIGURE_PREFIX)
        }

    def lineage(self, version: str) -> dict[str, str]:
        """The version's lineage tags (those it carries of :data:`LINEAGE_TAGS`)."""
        tags = self.tags(version)
        return {k: tags[k] for k in LINEAGE_TAGS if k in tags}

    def lineage_chain(self, version: str) -> list[dict[str, str]]:
        """``version`` and its ancestors by ``lathe.parent_version``, newest first (each with its lineage tags)."""
        chain: list[dict[str, str]] = []
        seen: set[str] = set()
        while version and version not in seen:  # a cycle would be a corrupted registry: stop, do not loop
            seen.add(version)
            chain.append({"version": version, **self.lineage(version)})
            version = chain[-1].get("lathe.parent_version", "")
        return chain

    def uri(self, version: str) -> str:
        """The ``models:/`` URI of a version."""
        return f"models:/{self.name}/{version}"


def variant_alias(track: str, variant: str) -> str:
    """The alias a variant (``int8``, ``distill``) of a track holds: the gate of the variant sets ``staff-int8``."""
    return f"{track}-{variant}"


def resolve_model(ref: str, cache: Path) -> Path:
    """An HF model directory, or a registered version (``models:/name/3``, ``models:/name@staff``) downloaded into ``cache``."""
    if "://" in ref or ref.startswith("models:/"):
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(cache)))
        except Exception as exc:  # MLflow raises several types for a missing version or store
            raise InputError(
                f"cannot fetch model {ref} from MLflow ({str(exc).splitlines()[0]}); check the name, version or alias"
            ) from None
    path = Path(ref)
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ModelSource:
    """A model reference resolved to local files: an HF directory or a Composer checkpoint file."""

    ref: str  # what the config said
    path: Path  # local HF model directory or checkpoint file
    version: str = ""  # the registered version it is, when it is one (lineage)

    @property
    def is_checkpoint(self) -> bool:
        """A Composer checkpoint (a file), rather than an HF directory."""
        return self.path.is_file()


def resolve_source(ref: str | None, cache: Path, setting: str = "train.init_from") -> ModelSource | None:
    """Resolve a model to start from (``train.init_from``). None when there is none: no reference, or an
    alias no version holds yet (before the first promotion). Anything else that cannot be found is an
    error naming ``setting`` (the config key the reference came from)."""
    if not ref:
        return None
    if match := _ALIAS.match(ref):
        version = ModelRegistry(match["name"]).find(match["alias"])
        if version is None:
            return None
        return ModelSource(ref, resolve_model(f"models:/{match['name']}/{version}", cache), version)
    if match := _VERSION.match(ref):
        return ModelSource(ref, resolve_model(ref, cache), match["version"])
    path = Path(ref)
    if path.is_file() or (path / "config.json").is_file():
        return ModelSource(ref, path)
    raise InputError(f"{setting} {ref!r} is not a models:/ URI, an HF model directory or a Composer checkpoint file")


def current_version(ref: str | None) -> str:
    """What a model reference names now, for a stage's fingerprint (``Stage.observe``): the version an
    alias holds (empty when none does yet), the version of a ``models:/name/N`` URI, else the reference."""
    if ref and (match := _ALIAS.match(ref)):
        return ModelRegistry(match["name"]).find(match["alias"]) or ""
    if ref and (match := _VERSION.match(ref)):
        return match["version"]
    return ref or ""


def model_to_tune(ref: str, cache: Path, setting: str) -> ModelSource:
    """The HF model a post-training stage starts from (``setting`` names the config key), as local files;
    one clear line when nothing holds ``ref`` yet."""
    source = resolve_source(ref, cache, setting)
    if source is None or source.is_checkpoint:
        raise InputError(
            f"{setting} {ref}: no registered version or HF directory holds it yet; "
            f"train and promote a model first (`make all`) or point {setting} at one"
        )
    return source


def pinned(ref: str, version: str) -> str:
    """``ref`` as the version a stage observed (``models:/name/<version>`` for an alias), so the run uses
    exactly what its fingerprint holds even if the alias moves meanwhile; other references as they are."""
    match = _ALIAS.match(ref)
    return f"models:/{match['name']}/{version}" if match and version else ref
