"""Query a samkor coordinator from Python over Arrow Flight SQL (ADBC), with mutual TLS.

    pip install adbc-driver-flightsql pyarrow pandas
    python docs/python_example.py HOST:PORT CERT_DIR PROJECT [USER]

CERT_DIR holds ca.pem and USER.pem / USER.key (e.g. the `certs` directory of
`samkor synth` or of the demo). Any Flight SQL client works the same way: the
project goes in the `x-samkor-project` header of every call.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions


def connect(address: str, certs: str, project: str, user: str = "alice"):
    def read(name: str) -> str:
        with open(f"{certs}/{name}") as f:
            return f.read()

    return flightsql.connect(
        f"grpc+tls://{address}",
        db_kwargs={
            DatabaseOptions.TLS_ROOT_CERTS.value: read("ca.pem"),
            DatabaseOptions.MTLS_CERT_CHAIN.value: read(f"{user}.pem"),
            DatabaseOptions.MTLS_PRIVATE_KEY.value: read(f"{user}.key"),
            DatabaseOptions.TLS_OVERRIDE_HOSTNAME.value: "localhost",
            "adbc.flight.sql.rpc.call_header.x-samkor-project": project,
        },
    )


def main() -> None:
    address, certs, project = sys.argv[1:4]
    user = sys.argv[4] if len(sys.argv) > 4 else "alice"
    with connect(address, certs, project, user) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT region, count(*) AS operations FROM hip.operations GROUP BY region ORDER BY region"
        )
        table = cur.fetch_arrow_table()  # a pyarrow Table; .to_pandas() for a DataFrame
        frame = table.to_pandas()
        print(frame.to_string(index=False))
        # Disclosure control: withheld cells are null, the `withheld` column names
        # them per row, and the schema metadata holds the settings in force (the
        # stream's schema, as pyarrow.flight reads it, also counts what was withheld).
        summary = json.loads((table.schema.metadata or {}).get(b"samkor.disclosure", b"{}"))
        withheld = int(frame["withheld"].notna().sum())
        print(
            f"{len(frame)} regions, {int(frame['operations'].sum())} operations in released cells;",
            f"disclosure control: at least {summary.get('min_cell_persons')} persons per cell,",
            f"{withheld} rows with withheld cells",
        )
        # Statistical methods are queries too (docs/statistics.md): a logistic
        # model fitted at the nodes by federated IRLS; no row leaves a node.
        cur.execute(
            "SELECT term, estimate, std_error, p_value, n, withheld FROM glm("
            "'SELECT reoperation, asa, bmi FROM hip.operations', 'reoperation ~ asa + bmi', 'binomial')"
        )
        model = cur.fetch_arrow_table().to_pandas()
        print(model.to_string(index=False))
        # Browse the registers like any database tool would.
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [
            f"{schema['db_schema_name']}.{t['table_name']}"
            for catalog in objects
            for schema in catalog["catalog_db_schemas"]
            for t in schema["db_schema_tables"]
        ]
        print("tables:", ", ".join(sorted(tables)))


if __name__ == "__main__":
    main()
