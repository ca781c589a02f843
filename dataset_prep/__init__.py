"""Converters from public raw formats to RecBole atomic files (item text kept for semantic IDs)."""
