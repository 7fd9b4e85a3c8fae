import sys, torch
from app.ml.loader import load_bundle
b = load_bundle(sys.argv[1], "cpu")
m = b.sequence_model
with torch.no_grad():
    torch.save(m.item_table().detach().float().clone(), "var/exp/items_full.pt")
torch.save(m.item_text.detach().float().clone(), "var/exp/text_full.pt")
print(m.item_table().shape, m.item_text.shape)
