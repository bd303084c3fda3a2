"""Federated training: models, local train step, aggregation strategies, the coordinator, the registry.

Pure torch and numpy; no import of dagster. Rows never leave a silo: agents train in place
(agent_actions) and the coordinator only ever sees weights, sample counts and aggregate metrics;
under secure aggregation (secagg, on by default), only the sum of the weights and of the counts.
"""
