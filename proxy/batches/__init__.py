"""Batches over `/v1/chat/completions` through the pipeline.

A batch created through the proxy has the proxy's own id: its input file is read from
the upstream, each line the free stages can answer (pattern replies, exact cache,
semantic cache) is answered at once, only the other lines go upstream as a batch (none
when every line was answered), and the output file the client downloads merges both in
the input's order. The mapping lives in the key's own store namespace, so one key never
sees another's batches.
"""
