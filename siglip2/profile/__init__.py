"""`siglip2 profile` (an application): what each NaFlex `max_num_patches` does to your images and your hardware.

`cli` (the command), `stats` (shapes from image headers, FLOPs), `report` (JSON, table, recommendation), `plots`
(PNGs), `timing` (the one timing method, shared with bench/).
"""
