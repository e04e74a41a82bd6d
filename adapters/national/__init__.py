"""The national envelope, wire types, output and field lengths shared by HIS and POS."""
