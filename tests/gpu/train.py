# Short PyTorch MLP training loop (the shape of the fixture's training recording).
import sys, time
import torch
secs = float(sys.argv[1]) if len(sys.argv) > 1 else 10
dev = torch.device("cuda")
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 10)).to(dev)
opt = torch.optim.AdamW(model.parameters())
end = time.time() + secs
steps = 0
while time.time() < end:
    x = torch.randn(512, 1024).to(dev)          # host-to-device batch every step
    y = torch.randint(0, 10, (512,)).to(dev)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    steps += 1
torch.cuda.synchronize()
print(f"train steps={steps}")
