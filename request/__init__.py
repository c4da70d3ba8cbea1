"""The request path: what a front end does to a ranking request before the model sees it.

numpy only (no JAX, no haiku), so a front-end process loads it in milliseconds:

    columns    the one declared schema of a request's arrays, and the types derived from it
    raw        RawRequest: a request in raw 64-bit ids, its JSON form and its validation
    schema     the JSON Schema of that form (request.schema.json is generated from it)
    encoding   EncodedRequest: ids hashed into table rows, history cut to the model's newest S
    layout     windows of candidates, pieces, and packing pieces into a padded RankingBatch
    synthetic  the deterministic synthetic request both clients (Python, Rust) generate
"""
