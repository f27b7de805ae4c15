"""ImageBind towers (Meta's code) and the Point-Bind point encoder, behind one encoder object."""
