"""The local stack (dev only, never deployed): moto, embedded Postgres, an OpenAI emulator.

It runs the real ``statemachine/`` definition and the real ``functions/`` handlers, with
buckets, tables, secrets and functions created from ``template.yaml`` itself.
"""
