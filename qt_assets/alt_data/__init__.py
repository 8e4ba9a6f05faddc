"""Alternative data: company news (scored for sentiment) and SEC Form 4 insider filings, stored by the
session on which they became usable (assets.py)."""
