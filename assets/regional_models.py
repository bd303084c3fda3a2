"""Memo-screening models specialised to one region each, trained inside that region's silo alone.

Each region's memos are written in its own language and vocabulary, and its laundering patterns
have their own prevalence: a model trained on one silo's memos and confirmed cases screens that
region's accounts. These assets depend on one silo each and on nothing in common with the shared
AML and credit models, so a run's multiprocess executor materializes them side by side; in the
agents each training is its own session.
"""

import dagster as dg

from assets.federated_training import AML_TABLES, aml_model_spec, checkpoint_dir, weights_only
from fedlake.catalog import Catalog
from fedlake.learning.aggregate import FedAvg
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.train import TrainConfig
from fedlake.relation import RelationHandle

GROUP = "models"  # as assets/models.py, which lists these assets with its own


class RegionalTrainingConfig(dg.Config):
    rounds: int = 2
    local_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    round_timeout_s: float = 300.0
    seed: int = 0
    encoder: str = "ngram"  # or "minilm-lora"
    max_samples: int = 0  # > 0: at most this many accounts per round (a short fine-tune)


def regional_model_name(catalog: Catalog, silo: str) -> str:
    return f"memo_screen_{catalog.silo(silo).region.lower()}"


def regional_model_asset(catalog: Catalog, silo: str) -> dg.AssetsDefinition:
    name = regional_model_name(catalog, silo)
    region = catalog.silo(silo).region

    @dg.asset(
        key=[GROUP, name],
        ins={table: dg.AssetIn(key=[silo, table], input_manager_key="federated_io_manager") for table in AML_TABLES},
        group_name=GROUP,
        kinds={"pytorch"},
        required_resource_keys={silo, "model_registry"},
        description=f"Memo screening for {region}, trained inside {silo} alone on its own memos and confirmed cases.",
    )
    def memo_screen(context: dg.AssetExecutionContext, config: RegionalTrainingConfig, **inputs: RelationHandle):
        spec = aml_model_spec(name, config.encoder)
        registry = context.resources.model_registry.registry()
        trainer = FederatedTrainer(
            {silo: getattr(context.resources, silo).agent()}, spec, FedAvg(), rounds=config.rounds, min_silos=1,
            round_timeout_s=config.round_timeout_s, checkpoint_dir=checkpoint_dir(registry.root, name, config, inputs),
            config=TrainConfig(epochs=config.local_epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                               max_samples=config.max_samples or None),
            seed=config.seed,
        )
        result = trainer.fit()
        version = registry.register(
            name, result.spec, result.weights,
            hyper_parameters=config.model_dump(),
            fingerprints=result.fingerprints,
            policy_decisions=weights_only([silo]),
            training={"rounds": result.rounds, "resumed_from": result.resumed_from, "history": result.history},
            description=f"Scores {region} accounts from behaviour and memo text; labels are {silo}'s own confirmed cases.",
        )
        evaluation = trainer.evaluate(version)
        version = registry.record_evaluation(name, version.version, evaluation["pooled"], per_region={region: evaluation["per_silo"][silo]})
        return dg.MaterializeResult(metadata={
            "version": version.version,
            "auc": version.metrics.get("auc"),
            "pr_auc": version.metrics.get("pr_auc"),
            "silo": silo,
            "rounds": result.rounds,
            "model_card": dg.MetadataValue.md(version.card(inline_images=True)),
        })

    return memo_screen


def regional_model_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    """One memo-screening model per silo that holds AML data."""
    return [regional_model_asset(catalog, silo) for silo, spec in catalog.silos.items() if set(AML_TABLES) <= set(spec.tables)]
