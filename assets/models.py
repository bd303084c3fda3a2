"""Specialised models, trained where the data lies: the credit-scoring network on the governed
credit features, and the anti-money-laundering model trained federatedly inside every silo (the
memos never leave their region). Each training is a registered version with its card; a blocking
check promotes it only where it beats the champion, or a floor, on held-out data."""


import dagster as dg
import pyarrow.parquet as pq

from assets.federated_training import AML_TABLES, aml_model_spec, checkpoint_dir, weights_only
from assets.regional_models import regional_model_assets
from fedlake.catalog import Catalog
from fedlake.drift import bin_shares, quantile_edges
from fedlake.learning.aggregate import FedAvg, FedProx
from fedlake.learning.coordinator import FederatedTrainer
from fedlake.learning.credit import BEHAVIOUR, credit_comparison
from fedlake.learning.data import fingerprint_versions, versioned_fingerprint
from fedlake.learning.registry import RegistryError
from fedlake.learning.secagg import SecAggConfig
from fedlake.learning.silo_dp import dp_accounting, required_dp
from fedlake.learning.train import DPConfig, TrainConfig
from fedlake.policy.model import load_policy
from fedlake.relation import RelationHandle

GROUP = "models"
CREDIT_MODEL = "credit_scoring_model"
AML_MODEL = "aml_model"
DRIFT_FEATURES = ("dti", *BEHAVIOUR[:-1])


class CreditTrainingConfig(dg.Config):
    epochs: int = 40
    lr: float = 0.003
    batch_size: int = 256
    hidden: int = 32
    seed: int = 0


class AMLTrainingConfig(dg.Config):
    rounds: int = 6
    local_epochs: int = 2
    lr: float = 0.01
    batch_size: int = 128
    strategy: str = "fedavg"  # or fedprox, for skewed silos
    mu: float = 0.01
    min_silos: int = 2
    round_timeout_s: float = 300.0
    dp_noise_multiplier: float = 0.0  # > 0: DP-SGD in every silo, epsilon reported
    seed: int = 0
    encoder: str = "ngram"  # the light baseline; "minilm-lora": all-MiniLM-L6-v2 fine-tuned with LoRA in each silo
    max_samples: int = 0  # > 0: each silo trains each round on at most this many accounts (a short fine-tune)
    secure_aggregation: bool = True  # the coordinator learns only the sum of the silos' updates (SecAgg)
    data_of_version: int = 0  # > 0: retrain on exactly the data version N saw (the Delta versions its fingerprints name)


def _card_metadata(version) -> dict:
    metrics = version.metrics
    return {
        "version": version.version,
        "auc": metrics.get("auc"),
        "pr_auc": metrics.get("pr_auc"),
        "ece": metrics.get("ece"),
        "model_card": dg.MetadataValue.md(version.card(inline_images=True)),
        "card_path": dg.MetadataValue.path(str(version.card_path)),
    }


def credit_scoring_model_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key=[GROUP, CREDIT_MODEL],
        ins={"features": dg.AssetIn(key=["governed", "customer_credit_features"], input_manager_key="federated_io_manager")},
        group_name=GROUP,
        kinds={"pytorch"},
        required_resource_keys={"governed_zone", "model_registry"},
    )
    def credit_scoring_model(context: dg.AssetExecutionContext, config: CreditTrainingConfig, features: RelationHandle):
        """A credit-scoring network on the compliant cross-silo features, with EU-only and oracle baselines."""
        zone = context.resources.governed_zone.connector()
        if features.version is not None:  # the Delta version the handle names, whatever was written since
            zone = zone.at_versions({features.table: features.version})
        table = zone.execute(f"SELECT * FROM {features.ref}").read_all()
        registry_resource = context.resources.model_registry
        truth_path = registry_resource.truth("loan_truth")
        train_config = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size)
        model, comparison = credit_comparison(table, pq.read_table(truth_path) if truth_path else None, train_config, config.seed)
        edges = quantile_edges(zone, features.table, DRIFT_FEATURES)
        profile = {"table": features.table, "edges": edges, "shares": bin_shares(zone, features.table, edges)}
        version = registry_resource.registry().register(
            CREDIT_MODEL,
            model.spec,
            model.weights,
            metrics=model.metrics,
            hyper_parameters={**config.model_dump(), "features": list(model.features)},
            fingerprints={f"governed.{features.table}": versioned_fingerprint(model.fingerprint, {features.table: features.version})},
            policy_decisions=[{"input": f"governed.{features.table}", "purpose": "credit_scoring",
                               "note": "compliant features built through the egress gates"}],
            comparisons=comparison,
            training={"drift_profile": profile, "n_train": model.n_train},
            description="Default probability of a loan from its facts and the borrower's behaviour in every region.",
        )
        return dg.MaterializeResult(
            metadata={
                **_card_metadata(version),
                "eu_only_auc": comparison["eu_only"].get("auc"),
                "oracle_auc": comparison.get("oracle", {}).get("auc"),
            }
        )

    return credit_scoring_model


def aml_model_asset(catalog: Catalog) -> dg.AssetsDefinition:
    silos = [name for name, spec in catalog.silos.items() if set(AML_TABLES) <= set(spec.tables)]
    ins = {
        f"{silo}__{table}": dg.AssetIn(key=[silo, table], input_manager_key="federated_io_manager")
        for silo in silos
        for table in AML_TABLES
    }

    @dg.asset(
        key=[GROUP, AML_MODEL],
        ins=ins,
        group_name=GROUP,
        kinds={"pytorch"},
        required_resource_keys={*silos, "model_registry"},
    )
    def aml_model(context: dg.AssetExecutionContext, config: AMLTrainingConfig, **inputs: RelationHandle):
        """An AML model over each silo's transactions and memos, trained federatedly: only weights leave a silo."""
        clients = {silo: getattr(context.resources, silo).agent() for silo in silos}
        spec = aml_model_spec(AML_MODEL, config.encoder)
        strategy = FedProx(mu=config.mu) if config.strategy == "fedprox" else FedAvg()
        dp = DPConfig(noise_multiplier=config.dp_noise_multiplier) if config.dp_noise_multiplier > 0 else None
        train_config = TrainConfig(epochs=config.local_epochs, lr=config.lr, batch_size=config.batch_size, dp=dp, seed=config.seed,
                                   max_samples=config.max_samples or None)
        registry = context.resources.model_registry.registry()
        data_versions = None
        if config.data_of_version:
            try:
                seen = registry.version(AML_MODEL, config.data_of_version).record.get("fingerprints") or {}
            except RegistryError as exc:
                raise dg.Failure(description=f"data_of_version: {exc}") from None
            data_versions = {silo: fingerprint_versions(fp) for silo, fp in seen.items() if fingerprint_versions(fp)}
        checkpoints = checkpoint_dir(registry.root, AML_MODEL, config, inputs)
        trainer = FederatedTrainer(
            clients, spec, strategy, rounds=config.rounds, min_silos=config.min_silos,
            round_timeout_s=config.round_timeout_s, checkpoint_dir=checkpoints, config=train_config, seed=config.seed,
            on_round=lambda r, w, record: context.log.info(f"round {r}: {record.get('participants')}"),
            secure_aggregation=SecAggConfig() if config.secure_aggregation else None,
            # each silo is asked for the DP its policy requires (policies.yaml training.<silo>.dp), which it would refuse less of
            dp_by_silo=required_dp(load_policy(getattr(context.resources, silos[0]).policy_path, catalog), silos, dp),
            data_versions=data_versions,
        )
        result = trainer.fit()
        # registered first: the silos evaluate registered versions only, named by their hash
        version = registry.register(
            AML_MODEL,
            result.spec,
            result.weights,
            hyper_parameters={**config.model_dump(), "strategy": strategy.to_dict()},
            fingerprints=result.fingerprints,
            policy_decisions=weights_only(silos),
            epsilon=result.epsilon,
            delta=result.delta,
            training={"rounds": result.rounds, "resumed_from": result.resumed_from, "history": result.history},
            description="Scores accounts from behaviour and memo text; labels are each silo's own confirmed cases.",
        )
        evaluation = trainer.evaluate(version)
        version = registry.record_evaluation(
            AML_MODEL, version.version, evaluation["pooled"],
            per_region={catalog.silo(s).region: m for s, m in evaluation["per_silo"].items()},
        )
        return dg.MaterializeResult(
            metadata={
                **_card_metadata(version),
                "rounds": result.rounds,
                "resumed_from_round": result.resumed_from,
                "epsilon": {s: e for s, e in result.epsilon.items()},
                "dp_accounting": {s: a.to_dict() for s, a in dp_accounting(result.history, silos).items()},
                "left_out": evaluation["left_out"],
                "suppressed_rows": evaluation["suppressed_rows"],
                "secure_aggregation_rounds": sum("secure_aggregation" in r for r in result.history),
            }
        )

    return aml_model


def promotion_check(model: str, floor: float, blocking: bool = True) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey([GROUP, model]),
        name="promote_if_better",
        blocking=blocking,
        required_resource_keys={"model_registry"},
        description=f"Promote the new version only where its held-out AUC beats the champion's, or {floor} without one.",
    )
    def promote(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        registry = context.resources.model_registry.registry()
        latest = registry.latest(model)
        if latest is None:
            return dg.AssetCheckResult(passed=False, description=f"no version of {model} is registered")
        decision = registry.promote(model, latest.version, floor=floor)
        champion = registry.champion(model)
        under_floor = (decision.challenger or 0) < floor
        return dg.AssetCheckResult(
            passed=decision.promoted,
            severity=dg.AssetCheckSeverity.ERROR if under_floor else dg.AssetCheckSeverity.WARN,
            description=decision.reason,
            metadata={"challenger": latest.version, "champion": champion.version if champion else 0},
        )

    return promote


def model_assets(catalog: Catalog) -> list[dg.AssetsDefinition]:
    return [credit_scoring_model_asset(), aml_model_asset(catalog), *regional_model_assets(catalog)]


def model_checks(catalog: Catalog) -> list[dg.AssetChecksDefinition]:
    """A promotion gate on every model. A regional memo screen must at least beat chance; its gate
    does not block (nothing is built on it, and a region with few confirmed cases may not get there)."""
    regional = [promotion_check(assets_def.key.path[-1], floor=0.5, blocking=False) for assets_def in regional_model_assets(catalog)]
    return [promotion_check(CREDIT_MODEL, floor=0.6), promotion_check(AML_MODEL, floor=0.55), *regional]
