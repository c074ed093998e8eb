"""GPT-SoVITS-style speech, trained here: corpus, content codes, the SoVITS generator."""
