"""The quickstart: a small real instance-retrieval dataset built from photos shipped in this folder."""
