-- Saga deadlines: when the current step gives up, and how many times the
-- current compensation has been sent. Both survive restarts.
ALTER TABLE orders.orders
    ADD COLUMN deadline_at timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0;
CREATE INDEX orders_by_deadline ON orders.orders (deadline_at)
    WHERE status NOT IN ('CONFIRMED', 'REJECTED', 'FAILED');
DROP INDEX orders.orders_in_flight;
CREATE INDEX orders_in_flight ON orders.orders (created_at)
    WHERE status NOT IN ('CONFIRMED', 'REJECTED', 'FAILED');
