"""Installed as the data package ``nasfpn.search_spaces`` (setup.cfg's package_dir), so that a
wheel carries these YAML files; ``nasfpn.shipped.REFERENCE_DIR`` finds them. No code here."""
