"""The contracts' codecs: request bytes into `request` arrays, scores into response bytes.
Ours (`convert`), xAI's (`xai`, `arrow_stream`), the wire writer, and the inflation budget
every compressed field draws from. No JAX."""
