-- A reservation as one statement. The consumer sends a batch's commands
-- to Postgres together (pipelined, in one transaction), so each command
-- must check and take stock in one statement: checking in one and taking
-- in the next would let another command's statements run in between.
-- The function returns facts; the service words the reply.
--
-- outcome: 'held' (the order already holds these rows: a replayed
-- command), 'released' (the order was cancelled: `reason` says why),
-- 'missing' / 'invalid' / 'short' (the first line, by product id, that
-- cannot be served; nothing taken), or 'reserved' (every line taken).
CREATE FUNCTION product.reserve(p_order uuid, p_ids uuid[], p_quantities integer[])
RETURNS TABLE (outcome text, product_id uuid, quantity integer, stock integer, reason text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT 'held'::text, r.product_id, r.quantity, p.stock, NULL::text
        FROM product.reservations r JOIN product.products p ON p.id = r.product_id
        WHERE r.order_id = p_order AND r.status = 'RESERVED'
        ORDER BY r.product_id;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT 'released'::text, NULL::uuid, NULL::integer, NULL::integer, o.reason
        FROM product.released_orders o WHERE o.order_id = p_order;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Lock the rows in id order, so concurrent reservations cannot
    -- deadlock, and check every line before changing any.
    PERFORM 1 FROM product.products p WHERE p.id = ANY (p_ids) ORDER BY p.id FOR UPDATE;
    RETURN QUERY
        SELECT CASE WHEN p.id IS NULL THEN 'missing'
                    WHEN l.quantity <= 0 THEN 'invalid'
                    ELSE 'short' END,
               l.product_id, l.quantity, p.stock, NULL::text
        FROM unnest(p_ids, p_quantities) AS l (product_id, quantity)
        LEFT JOIN product.products p ON p.id = l.product_id
        WHERE p.id IS NULL OR l.quantity <= 0 OR p.stock < l.quantity
        ORDER BY l.product_id
        LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
        WITH lines AS (
            SELECT * FROM unnest(p_ids, p_quantities) AS l (product_id, quantity)
        ), taken AS (
            UPDATE product.products p SET stock = p.stock - l.quantity, updated_at = now()
            FROM lines l WHERE p.id = l.product_id
            RETURNING p.id, l.quantity, p.stock
        ), held AS (
            INSERT INTO product.reservations (order_id, product_id, quantity, status)
            SELECT p_order, l.product_id, l.quantity, 'RESERVED' FROM lines l
        )
        SELECT 'reserved'::text, t.id, t.quantity, t.stock, NULL::text FROM taken t ORDER BY t.id;
END
$fn$;
