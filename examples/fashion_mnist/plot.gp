# Loss and accuracy curves of the Fashion-MNIST example, from its CSV logs.
# Usage: gnuplot -e "outdir='DIR'; optimizers='muon adamw sgd'" plot.gp
# Writes DIR/curves.png: train and validation loss (left), test accuracy (right).
if (!exists("outdir")) outdir = "fashion_mnist_out"
if (!exists("optimizers")) optimizers = "muon adamw sgd"

set terminal pngcairo size 1400,560 font ",11"
set output outdir."/curves.png"
set datafile separator ","
set key top right
set grid
set multiplot layout 1,2 title "Fashion-MNIST MLP: hybrid Muon vs AdamW vs SGD"

file(name) = outdir."/".name.".csv"
set xlabel "epoch"
set ylabel "cross-entropy loss"
set logscale y
set title "loss (solid: train, running mean over the epoch; dashed: validation)"
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:2 skip 1 \
       with linespoints lw 2 lc i title word(optimizers, i)." train", \
     for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:3 skip 1 \
       with linespoints lw 2 dt 2 lc i title word(optimizers, i)." val"

unset logscale y
set ylabel "test accuracy (%)"
set title "test accuracy"
set key bottom right
plot for [i=1:words(optimizers)] file(word(optimizers, i)) using 1:($6*100) skip 1 \
       with linespoints lw 2 lc i title word(optimizers, i)

unset multiplot
