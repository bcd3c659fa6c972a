-- Orders whose stock was released (compensation). A reservation that
-- arrives for such an order afterwards, however late or replayed, must not
-- take stock again.
CREATE TABLE product.released_orders (
    order_id    uuid PRIMARY KEY,
    reason      text NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now()
);
