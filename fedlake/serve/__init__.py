"""`fedlake serve`: the federation as a long-lived coordinator behind Arrow Flight SQL, so ADBC and
JDBC clients and BI tools query it with the identity of their token.

- messages: the Flight SQL protobuf messages, declared from FlightSql.proto's field numbers
- metadata: answers to the metadata commands in the schemas the spec fixes
- coordinator: tokens -> identities, one Federation per identity, purposes, queries, table listings
- statements: prepared statements and pending results, bound to the identity that made them
- flightsql: the Flight SQL server (`serve`)
- remote: `fedlake query` through a served coordinator (FEDLAKE_COORDINATOR)

Nothing is imported here, so `fedlake query` loads only what its mode needs.
"""
