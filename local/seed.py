"""Realistic sample data for the demo and tests: customers and orders with foreign keys.

`updated_at` is maintained by a trigger, as most applications do, so updates move the cursor.
"""

from __future__ import annotations

import psycopg2

DDL = """
CREATE SCHEMA IF NOT EXISTS customers;
CREATE SCHEMA IF NOT EXISTS orders;

CREATE OR REPLACE FUNCTION public.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;

CREATE TABLE customers.customers (
    id          bigint PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    country     char(2),
    preferences jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE customers.addresses (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers.customers(id),
    kind        text NOT NULL,
    line1       text NOT NULL,
    city        text NOT NULL,
    postcode    varchar(12),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TYPE orders.order_status AS ENUM ('new', 'paid', 'shipped', 'delivered', 'cancelled');
CREATE TABLE orders.orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers.customers(id),
    status      orders.order_status NOT NULL,
    total       numeric(12, 2) NOT NULL,
    currency    char(3) NOT NULL DEFAULT 'EUR',
    placed_at   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders.order_items (
    order_id    bigint NOT NULL REFERENCES orders.orders(id),
    line_no     int NOT NULL,
    sku         text NOT NULL,
    quantity    int NOT NULL,
    unit_price  numeric(10, 2) NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX ON customers.customers (updated_at);
CREATE INDEX ON customers.addresses (updated_at);
CREATE INDEX ON orders.orders (updated_at);
CREATE INDEX ON orders.order_items (updated_at);
CREATE TRIGGER touch BEFORE UPDATE ON customers.customers FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
CREATE TRIGGER touch BEFORE UPDATE ON customers.addresses FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
CREATE TRIGGER touch BEFORE UPDATE ON orders.orders FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
CREATE TRIGGER touch BEFORE UPDATE ON orders.order_items FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();
"""

DATA = """
INSERT INTO customers.customers (id, email, full_name, country, preferences, created_at, updated_at)
SELECT g, 'customer' || g || '@example.com',
       (ARRAY['Ada','Grace','Linus','Zoë','José','Björk','李','Amélie'])[1 + g % 8] || ' ' || g,
       (ARRAY['DE','FR','GB','US','JP','BR'])[1 + g % 6],
       jsonb_build_object('newsletter', g % 2 = 0, 'tags', jsonb_build_array('t' || g % 5, 'vip')),
       now() - (g || ' hours')::interval, now() - (g || ' minutes')::interval
FROM generate_series(1, {customers}) g;

INSERT INTO customers.addresses (id, customer_id, kind, line1, city, postcode, updated_at)
SELECT g, 1 + (g - 1) % {customers}, CASE WHEN g <= {customers} THEN 'billing' ELSE 'shipping' END,
       g || ' Main Street', (ARRAY['Berlin','Paris','London','Austin','Osaka','São Paulo'])[1 + g % 6],
       lpad((g % 99999)::text, 5, '0'), now() - (g || ' minutes')::interval
FROM generate_series(1, {addresses}) g;

INSERT INTO orders.orders (id, customer_id, status, total, placed_at, updated_at)
SELECT g, 1 + (g * 7919) % {customers},
       (ARRAY['new','paid','shipped','delivered','cancelled']::orders.order_status[])[1 + g % 5],
       0, now() - (g || ' hours')::interval, now() - (g || ' minutes')::interval
FROM generate_series(1, {orders}) g;

INSERT INTO orders.order_items (order_id, line_no, sku, quantity, unit_price, updated_at)
SELECT o, l, 'SKU-' || ((o * l) % 997), 1 + (o + l) % 4, ((o * 31 + l * 17) % 20000) / 100.0 + 0.99,
       now() - (o || ' minutes')::interval
FROM generate_series(1, {orders}) o, generate_series(1, 1 + o % 4) l;

ALTER TABLE orders.orders DISABLE TRIGGER touch;
UPDATE orders.orders o SET total = s.total
FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM orders.order_items GROUP BY 1) s
WHERE s.order_id = o.id;
ALTER TABLE orders.orders ENABLE TRIGGER touch;
"""


def seed(dsn: str, customers: int = 5_000, orders: int = 30_000) -> None:
    """Create the demo schemas and fill them (idempotent only on an empty database)."""
    params = {"customers": customers, "addresses": customers + customers // 3, "orders": orders}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(DDL)
        cur.execute(DATA.format(**params))  # integers only: safe to format
    conn.close()


def table_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        counts = {}
        for table in tables:
            cur.execute(f"SELECT count(*) FROM {table}")  # table names come from our own list
            counts[table] = int(cur.fetchone()[0])
    conn.close()
    return counts
