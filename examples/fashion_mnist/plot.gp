# Loss and accuracy curves of the Fashion-MNIST example, from its CSV logs.
# Usage: gnuplot -e "outdir='DIR'; optimizers='muon adamw sgd'; seeds=3" plot.gp
# Reads DIR/<optimizer>.csv, the per-epoch mean over the seeds (columns:
# 1 epoch, 2 train_loss, 3 val_loss, 6 test_accuracy, 8 train_cpu_s,
# 11 seeds, 16 test_accuracy_std), and writes DIR/curves.png: loss per epoch,
# test accuracy per epoch (error bars: sample standard deviation over the
# seeds), and validation loss against training CPU time (Muon's extra cost
# per step shows there, not in the per-epoch panels; CPU time, because wall
# time on a shared machine also measures the neighbours).
if (!exists("outdir")) outdir = "fashion_mnist_out"
if (!exists("optimizers")) optimizers = "muon normuon adamuon adamw sgd"
if (!exists("seeds")) seeds = 1
over = seeds > 1 ? sprintf(", mean over %d seeds", seeds) : ""

set terminal pngcairo size 1800,560 font ",11" noenhanced
set output outdir."/curves.png"
set datafile separator ","
set grid
set multiplot layout 1,3 title "Fashion-MNIST MLP: hybrids Muon/NorMuon/AdaMuon + AdamW vs AdamW vs SGD (each at its best swept lr".over.")"

file(name) = outdir."/".name.".csv"
set xlabel "epoch"
set xrange [0:*]
set xtics 1
set ylabel "cross-entropy loss"
set key top right
set title "loss (solid: train, mean over the epoch; dashed: validation)"
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:2 skip 1 \
       with linespoints lw 2 lc i title word(optimizers, i)." train", \
     for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:3 skip 1 \
       with linespoints lw 2 dt 2 lc i title word(optimizers, i)." val"

set ylabel "test accuracy (%)"
set title seeds > 1 ? "test accuracy (bars: sample std over the seeds)" : "test accuracy"
set key bottom right
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:($6*100):($16*100) skip 1 \
       with yerrorlines lw 2 lc i title word(optimizers, i)

set xlabel "training CPU time (s, one thread)"
set xtics autofreq
set ylabel "validation loss"
set title "validation loss vs training CPU time"
set key top right
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 8:3 skip 1 \
       with linespoints lw 2 lc i title word(optimizers, i)

unset multiplot
