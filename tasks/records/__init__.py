"""The records one pipeline hands to the next, each declared once with its schema version.

curation → training: `DatasetRelease` (the curation report of a dataset); training → registry → serving:
`ModelVersion` (an entry of `models/registry.json`); serving → nightly, backlog and the dashboard: `EndpointRecord`
(`serving/endpoint.json`). What lives in storage is named relative to the storage root, so a copied or moved root
still resolves; what lives outside it (a SageMaker endpoint, a hub model) stays absolute.
"""
