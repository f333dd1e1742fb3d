"""uid2_crypto."""
