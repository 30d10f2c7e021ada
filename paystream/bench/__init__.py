"""`paystream bench`: end-to-end throughput and latency of the command pipeline.

A run sends realistic payment commands through a real worker (simulator gateway) and
measures, on the same broker, two baselines: a raw aiokafka passthrough and a bare
Faust forwarder. ``runner`` orchestrates, ``load`` builds the command mix, ``probe``
produces and watches topics, ``stats`` computes and renders figures, ``profiling``
samples the worker with py-spy. The baselines run as their own processes:
``python -m paystream.bench.raw_passthrough`` and ``python -m paystream.bench.faust_forwarder``.
"""
